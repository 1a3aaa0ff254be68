"""The image as users run it: built from this tree (``conftest.py``), started
as uid 10001 on a read-only root with data and cache volumes and a tmpfs
``/tmp``, answered through its published port by a real ``tritonclient`` (a
demo model on MLServer, and one on the image's Triton), then stopped with
SIGTERM: cleanly, within the drain timeout, leaving no process behind.

Figures (image size and the virtualenv's share, build time, container start to
ready) are printed and recorded as the test's properties.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.clients import MeshClient, check_sums, infer
from tests.conftest import wait_for
from tests.image.conftest import BUILD_TIMEOUT_S, BuiltImage
from tests.image.context import ROOT
from tests.image.podman import Podman

# A cold build (base image, dependencies) takes minutes: more than the suite's default.
pytestmark = [pytest.mark.image, pytest.mark.timeout(BUILD_TIMEOUT_S + 600)]

UID = 10001
DATA_DIR = "/var/lib/meshlet"
CACHE_DIR = "/var/cache/meshlet"
VENV = "/opt/meshlet/venv"
DEMO_MODELS = 4
# The agent's own default, set explicitly: `podman stop` allows exactly this
# long before SIGKILL, so a shutdown that overruns it fails with 137.
DRAIN_TIMEOUT_S = 20
READY_TIMEOUT_S = 120.0
# Exits 0 naming what it found when a build tool or pip's cache is in the image.
LEFTOVERS = ("for tool in gcc cc c++ make; do command -v $tool && exit 0; done; "
             "for cache in /root/.cache/pip /var/lib/meshlet/.cache/pip; do "
             "[ -e $cache ] && echo $cache && exit 0; done; exit 1")


def pyproject_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_image_says_what_it_is_and_runs_as_users_expect(
    built_image: BuiltImage, podman: Podman
) -> None:
    image = podman.inspect("image", built_image.tag)
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["tini", "--", "meshlet", "serve"]
    assert set(config["ExposedPorts"]) == {"8033/tcp", "8034/tcp", "2112/tcp"}
    assert set(config["Volumes"]) == {DATA_DIR, CACHE_DIR}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["MESHLET_DATA_DIR"], env["MESHLET_CACHE_DIR"]) == (DATA_DIR, CACHE_DIR)
    assert "/healthz" in " ".join(image["Healthcheck"]["Test"])
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "meshlet"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == pyproject_version()
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")


@contextlib.contextmanager
def container(podman: Podman, *args: str) -> Iterator[str]:
    """``podman run -d ARGS``; yields the container id, and removes the
    container (by that id) and its anonymous volumes however the test ends."""
    cid = podman.out("run", "--detach", *args)
    try:
        yield cid
    finally:
        podman.run("rm", "--force", "--volumes", "--time", "0", cid, check=False)
    assert podman.out("ps", "--all", "--quiet", "--no-trunc", "--filter", f"id={cid}") == ""


def logs(podman: Podman, cid: str) -> str:
    result = podman.run("logs", "--tail", "60", cid, check=False)
    return (result.stdout + result.stderr)[-8000:]


def host_processes(podman: Podman, cid: str) -> list[psutil.Process]:
    """The container's processes as this machine sees them."""
    table = podman.out("top", cid, "hpid").splitlines()[1:]
    found = []
    for line in table:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(int(line.split()[0])))
    return found


def gone(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited (a pid reused since is another process)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def until(condition: Callable[[], object], timeout_s: float, what: str,
          podman: Podman, cid: str) -> object:
    """wait_for, with the container's log in the failure."""
    try:
        return wait_for(condition, timeout_s, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\ncontainer log:\n{logs(podman, cid)}") from err


def server_ready(client: triton.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready(client_timeout=5))
    except InferenceServerException:
        return False


def test_container_serves_then_stops_on_sigterm(
    built_image: BuiltImage, podman: Podman, volumes: tuple[str, str],
    record_property: Callable[[str, object], None], capsys: pytest.CaptureFixture[str],
) -> None:
    data, cache = volumes
    port = free_port()
    start = time.monotonic()
    with container(
        podman,
        "--read-only", "--user", f"{UID}:{UID}", "--tmpfs", "/tmp",
        "--volume", f"{data}:{DATA_DIR}", "--volume", f"{cache}:{CACHE_DIR}",
        "--publish", f"127.0.0.1:{port}:8033",
        "--env", 'MESHLET_RUNTIMES=["mlserver","triton"]',
        "--env", f"MESHLET_DRAIN_TIMEOUT_S={DRAIN_TIMEOUT_S}",
        built_image.tag, "--demo", str(DEMO_MODELS),
    ) as cid:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            until(lambda: server_ready(client), READY_TIMEOUT_S, "the agent's ServerReady",
                  podman, cid)
            ready_s = time.monotonic() - start
            # A real tritonclient, through the published port, on MLServer.
            for i in range(DEMO_MODELS):
                check_sums(infer(client, f"simple-string-{i}", client_timeout=60))
            answered_s = time.monotonic() - start
            # And on the image's Triton (the nvidia-pytriton wheel's server).
            mesh = MeshClient(f"127.0.0.1:{port}")
            try:
                mesh.register("triton-simple", runtime="triton", load=True)
            finally:
                mesh.close()
            check_sums(infer(client, "triton-simple", client_timeout=60))
        finally:
            client.close()

        # Who runs: tini as PID 1, the agent under it, its runtimes; all uid 10001.
        top = [line.split(None, 2) for line in
               podman.out("top", cid, "pid", "user", "args").splitlines()[1:]]
        commands = {int(pid): args for pid, _, args in top}
        assert commands[1].startswith("tini -- meshlet serve"), commands
        assert any("meshlet serve" in args for pid, args in commands.items() if pid != 1)
        assert any("adapters.mlserver.launcher" in args for args in commands.values())
        assert any("tritonserver" in args for args in commands.values())
        assert {user for _, user, _ in top} == {"meshlet"}, top
        assert podman.out("exec", cid, "id", "-u") == str(UID)
        # A read-only root, writable volumes, a healthy HEALTHCHECK.
        denied = podman.run("exec", cid, "touch", f"{VENV}/written", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        assert podman.run("exec", cid, "touch", f"{DATA_DIR}/written", f"{CACHE_DIR}/written",
                          "/tmp/written", check=False).returncode == 0
        health = podman.run("healthcheck", "run", cid, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        # Nothing a build leaves behind: no compiler, no pip cache.
        leftovers = podman.run("exec", "--user", "0", cid, "sh", "-c", LEFTOVERS, check=False)
        assert leftovers.returncode == 1, leftovers.stdout + leftovers.stderr
        venv_bytes = int(podman.out("exec", cid, "du", "-sb", VENV).split()[0])

        # SIGTERM: a clean stop within the drain timeout, nothing left running.
        processes = host_processes(podman, cid)
        conmon = psutil.Process(int(podman.inspect("container", cid)["State"]["ConmonPid"]))
        assert processes
        stopping = time.monotonic()
        podman.run("stop", "--time", str(DRAIN_TIMEOUT_S), cid, timeout_s=DRAIN_TIMEOUT_S + 60)
        stop_s = time.monotonic() - stopping
        state = podman.inspect("container", cid)["State"]
        assert state["Status"] == "exited", state
        assert state["ExitCode"] in (0, 143), f"{state}\n{logs(podman, cid)}"
        assert stop_s < DRAIN_TIMEOUT_S, f"stop took {stop_s:.1f} s\n{logs(podman, cid)}"
        listed = podman.out("ps", "--all", "--no-trunc", "--filter", f"id={cid}",
                            "--format", "{{.Status}}")
        assert listed.startswith("Exited"), listed
        until(lambda: all(gone(p) for p in processes), 10, "the container's processes to exit",
              podman, cid)
    until(lambda: gone(conmon), 30, "conmon to exit once the container is removed",
          podman, cid)

    figures = {
        "image": built_image.tag,
        "image_bytes": built_image.size_bytes,
        "virtualenv_bytes": venv_bytes,
        "virtualenv_share": round(venv_bytes / built_image.size_bytes, 3),
        "build_s": None if built_image.build_s is None else round(built_image.build_s, 1),
        "start_to_ready_s": round(ready_s, 2),
        "start_to_first_answers_s": round(answered_s, 2),
        "sigterm_to_exit_s": round(stop_s, 2),
        "exit_code": state["ExitCode"],
    }
    for name, value in figures.items():
        record_property(name, value)
    with capsys.disabled():
        print(f"\nimage figures: {json.dumps(figures)}")
