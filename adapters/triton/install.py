"""Finding a Triton server to run: its binary, its backends, its environment.

Tried in this order, first hit wins:

1. an explicit binary (``MESHLET_TRITON_SERVER_PATH``): used as is; it must be
   an executable file, a wrong setting is an error rather than a fallback;
2. the ``nvidia-pytriton`` wheel (``pip install 'meshlet[triton]'``), found
   with ``importlib.util.find_spec`` so pytriton itself is never imported;
3. ``tritonserver`` on ``PATH`` (the official container: ``/opt/tritonserver``).

The backend directory is the explicit one when given. Otherwise it sits next
to the binary: ``<prefix>/backends`` for an installed Triton (the container's
layout), and for the wheel's layout (``<prefix>/python_backend_stubs``) one
built under the adapter's work dir, because the wheel keeps the Python
backend's stub apart, one per Python version, and Triton expects it inside
``backends/python/``. That directory holds symlinks only, replaced on every
build, so a rebuild is idempotent and never serves a stale stub.

Only the wheel gets an environment of its own: its stub is the one for this
interpreter's version, so this interpreter's ``bin`` goes first on ``PATH`` and
the stub's embedded Python finds this environment's packages (numpy). A
container's stub is built for the container's Python and is left alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import RuntimeUnavailable

SERVER_BINARY = "tritonserver"
PYTHON_BACKEND = "python"
# What the Python backend needs in backends/python/, and where the wheel keeps
# each (relative to its ``tritonserver`` folder). The stub is per Python version.
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"
_STUBS_DIR = "python_backend_stubs"
_HOW_TO_FIX = (
    "install it with `pip install 'meshlet[triton]'`, or set MESHLET_TRITON_SERVER_PATH "
    "to a tritonserver binary"
)


class TritonMissing(RuntimeUnavailable):
    """No usable Triton server: the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class TritonInstall:
    """A Triton server ready to start."""

    server: Path  # the tritonserver binary
    backends: Path  # passed as --backend-directory
    env: dict[str, str] = field(default_factory=dict)  # set over the agent's environment

    def backends_available(self) -> frozenset[str]:
        """Names of the backends in ``backends``: subdirectories holding a
        ``libtriton_<name>.so``, or a ``model.py`` (Triton's Python-based backends)."""
        try:
            entries = list(self.backends.iterdir())
        except OSError:
            return frozenset()
        return frozenset(
            entry.name
            for entry in entries
            if (entry / f"libtriton_{entry.name}.so").exists() or (entry / "model.py").exists()
        )


def find_triton(
    server_path: Path | None, backend_dir: Path | None, work_dir: Path
) -> TritonInstall:
    """The Triton to run (see the module docstring for the order); raises
    ``TritonMissing`` when there is none. ``work_dir`` is the adapter's own
    directory, where the wheel's backend directory is built."""
    if server_path is not None:
        if not (server_path.is_file() and os.access(server_path, os.X_OK)):
            raise TritonMissing(
                f"tritonserver {server_path} (MESHLET_TRITON_SERVER_PATH) is not an executable "
                "file; fix the setting or unset it to use the nvidia-pytriton wheel"
            )
        return _install(server_path, backend_dir, work_dir)
    wheel_server = _wheel_server()
    if wheel_server is not None:
        return _install(wheel_server, backend_dir, work_dir)
    on_path = shutil.which(SERVER_BINARY)
    if on_path is not None:
        return _install(Path(on_path), backend_dir, work_dir)
    raise TritonMissing(
        "no tritonserver found: MESHLET_TRITON_SERVER_PATH is unset, the nvidia-pytriton "
        f"wheel is not installed for {sys.executable}, and there is no {SERVER_BINARY} on "
        f"PATH; {_HOW_TO_FIX}"
    )


def _wheel_server() -> Path | None:
    """The wheel's binary, if the wheel is installed (without importing it)."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        server = Path(location) / "tritonserver" / "bin" / SERVER_BINARY
        if server.is_file() and os.access(server, os.X_OK):
            return server
    return None


def _install(server: Path, backend_dir: Path | None, work_dir: Path) -> TritonInstall:
    if backend_dir is not None:
        if not backend_dir.is_dir():
            raise TritonMissing(f"Triton backend directory {backend_dir} is not a directory")
        return TritonInstall(server, backend_dir)
    # The binary may be a symlink into its real prefix (/usr/local/bin -> /opt/...).
    for prefix in dict.fromkeys((server.parent.parent, server.resolve().parent.parent)):
        if (prefix / _STUBS_DIR).is_dir():
            backends = _build_wheel_backends(prefix, work_dir / "backends")
            path = os.pathsep.join(
                p for p in (os.path.dirname(sys.executable), os.environ.get("PATH")) if p
            )
            return TritonInstall(server, backends, {"PATH": path})
        if (prefix / "backends").is_dir():
            return TritonInstall(server, prefix / "backends")
    raise TritonMissing(
        f"no backend directory next to {server} (looked for {server.parent.parent / 'backends'}); "
        "set the Triton backend directory explicitly"
    )


def _build_wheel_backends(prefix: Path, backends: Path) -> Path:
    """``backends/python/`` as symlinks into the wheel, with this Python's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = prefix / _STUBS_DIR / version / _STUB
    if not stub.is_file():
        shipped = sorted(p.name for p in (prefix / _STUBS_DIR).iterdir() if p.is_dir())
        raise TritonMissing(
            f"the Triton wheel at {prefix} ships no Python backend stub for Python {version} "
            f"(it has: {', '.join(shipped) or 'none'}); run the agent on one of those versions, "
            "or set MESHLET_TRITON_SERVER_PATH to a Triton built for this one"
        )
    targets = {name: prefix / "backends" / PYTHON_BACKEND / name for name in _PYTHON_BACKEND_FILES}
    targets[_STUB] = stub
    for target in targets.values():
        if not target.exists():
            raise TritonMissing(f"the Triton wheel at {prefix} lacks {target}; reinstall it")
    folder = backends / PYTHON_BACKEND
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        _symlink(folder / name, target)
    return backends


def _symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing whatever is there in one rename."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)
