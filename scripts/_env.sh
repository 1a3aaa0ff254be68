# Shared by scripts/run, scripts/test, scripts/bench: create the virtualenv and
# install meshlet into it, re-installing only when pyproject.toml changed.
# Usage: source scripts/_env.sh [extra]   (extra: "dev" for the test tools)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MESHLET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
extra="${1:-}"
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
