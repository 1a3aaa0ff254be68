# Shared by scripts/run, scripts/test, scripts/bench: create the virtualenv and
# install meshlet into it, re-installing only when pyproject.toml changed.
# Usage: source scripts/_env.sh [extra]   (extra: "dev,triton" for the test tools)
#
# One environment per purpose: the plain install (scripts/run) lives in .venv,
# each set of extras in its own .venv-<extras> (scripts/test and scripts/bench
# share .venv-dev-triton). The triton extra pins numpy<2 and pandas<3, so
# installing it into the run environment would silently downgrade what
# `meshlet serve` runs on; separate directories mean neither script ever
# changes the other's dependencies. MESHLET_VENV overrides the directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extra="${1:-}"
default_venv="$ROOT/.venv"
[[ -n "$extra" ]] && default_venv="$ROOT/.venv-${extra//,/-}"
VENV="${MESHLET_VENV:-$default_venv}"
if [[ -n "${MESHLET_ENV_DRY_RUN:-}" ]]; then  # tests: say which, install nothing
  echo "$VENV ${extra:-base}"
  return 0 2>/dev/null || exit 0
fi
PY="${PYTHON:-python3.11}"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo ">> creating virtualenv in $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
spec="."
[[ -n "$extra" ]] && spec=".[$extra]"
stamp="$VENV/.meshlet-installed-${extra:-base}"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$hash" ]]; then
  echo ">> installing meshlet ($spec) into $VENV" >&2
  (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet -e "$spec")
  echo "$hash" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
