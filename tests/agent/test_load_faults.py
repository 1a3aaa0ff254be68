"""A runtime that dies while a model loads: every request waiting on that
load gets an answer within the load timeout, in MLServer and in Triton.

The model under test holds its load open while a "hold" file exists and
notes each load attempt in a "started" file, so the test knows the load is
under way before it kills the runtime (no timing guesswork). One death: the
load is tried again on the restarted runtime and every waiter is served.
Two deaths: every waiter gets UNAVAILABLE at once, not at the timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from agent.process import AgentProcess
from tests.clients import MeshClient, string_inputs
from tests.conftest import descendant_pids, runtime_pids, wait_for

StartAgent = Callable[..., AgentProcess]
LOAD_TIMEOUT_S = 60.0  # the product's default; the test must answer well inside it
WAITERS = 3

MLSERVER_MODEL = '''
import asyncio
import os

from mlserver import MLModel
from mlserver.types import InferenceResponse, ResponseOutput


class HeldModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        with open(extra["started"], "a") as out:
            out.write("load\\n")
        while os.path.exists(extra["hold"]):
            await asyncio.sleep(0.05)  # poll: held until the test removes the file
        return True

    async def predict(self, payload):
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="OK", shape=[1], datatype="INT32", data=[7])])
'''

TRITON_MODEL = '''
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

STARTED = {started!r}
HOLD = {hold!r}


class TritonPythonModel:
    def initialize(self, args):
        with open(STARTED, "a") as out:
            out.write("load\\n")
        while os.path.exists(HOLD):
            time.sleep(0.05)  # poll: held until the test removes the file

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OK", np.array([7], dtype=np.int32))]) for _ in requests]
'''

TRITON_CONFIG = '''
backend: "python"
max_batch_size: 0
input [
  {{ name: "INPUT0", data_type: TYPE_STRING, dims: [ -1 ] }},
  {{ name: "INPUT1", data_type: TYPE_STRING, dims: [ -1 ] }}
]
output [ {{ name: "OK", data_type: TYPE_INT32, dims: [ 1 ] }} ]
'''


class HeldModel:
    """Files that steer the held model: ``started`` grows a line per load attempt."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.started = root / "started"
        self.hold = root / "hold"
        self.started.touch()
        self.hold.touch()

    def attempts(self) -> int:
        return len(self.started.read_text().splitlines())

    def release(self) -> None:
        self.hold.unlink()


def mlserver_artifact(root: Path, held: HeldModel) -> Path:
    artifact = root / "held-mlserver"
    artifact.mkdir()
    (artifact / "held_model.py").write_text(MLSERVER_MODEL)
    (artifact / "model-settings.json").write_text(json.dumps({
        "name": "held", "implementation": "held_model.HeldModel",
        "parameters": {"extra": {"started": str(held.started), "hold": str(held.hold)}},
    }))
    return artifact


def triton_artifact(root: Path, held: HeldModel) -> Path:
    artifact = root / "held-triton"
    (artifact / "1").mkdir(parents=True)
    (artifact / "1" / "model.py").write_text(
        TRITON_MODEL.format(started=str(held.started), hold=str(held.hold)))
    (artifact / "config.pbtxt").write_text(TRITON_CONFIG.format())
    return artifact


def tritonserver_pids(agent_pid: int) -> list[int]:
    return descendant_pids(agent_pid, lambda cmd: bool(cmd) and cmd[0].endswith("/tritonserver"))


async def waiters(address: str, model: str) -> list[tuple[str, float]]:
    """``WAITERS`` concurrent requests; each one's outcome and seconds taken."""
    async with triton_aio.InferenceServerClient(address) as client:
        async def one() -> tuple[str, float]:
            started = time.monotonic()
            try:
                result = await client.infer(model, string_inputs(module=triton_aio),
                                            client_timeout=2 * LOAD_TIMEOUT_S)
                outcome = f"OK {result.as_numpy('OK').tolist()}"
            except InferenceServerException as err:
                outcome = str(err.status())
            return outcome, time.monotonic() - started

        return await asyncio.gather(*(one() for _ in range(WAITERS)))


def runtimes_up(agent: AgentProcess, *kinds: str) -> bool:
    url = f"http://127.0.0.1:{agent.info['metrics_port']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
    except OSError:
        return False
    return all(f"{kind}: up" in body for kind in kinds)


def kill_mid_load(
    agent: AgentProcess, held: HeldModel, model: str, deaths: int,
    server_pids: Callable[[int], list[int]],
) -> list[tuple[str, float]]:
    """Send the waiters; kill the runtime ``deaths`` times, each while a load
    attempt is held open; then let the load finish. Returns the answers."""

    async def scenario() -> list[tuple[str, float]]:
        answers = asyncio.create_task(waiters(agent.address, model))
        for death in range(1, deaths + 1):
            await asyncio.to_thread(wait_for, lambda d=death: held.attempts() >= d,
                                    timeout_s=LOAD_TIMEOUT_S, what=f"load attempt {death}")
            [pid] = await asyncio.to_thread(wait_for, lambda: server_pids(agent.pid),
                                            what="the runtime's pid")
            os.kill(pid, signal.SIGKILL)
        if deaths < 2:
            await asyncio.to_thread(wait_for, lambda: held.attempts() > deaths,
                                    timeout_s=LOAD_TIMEOUT_S, what="the load tried again")
        held.release()
        return await answers

    return asyncio.run(scenario())


@dataclass(frozen=True)
class Runtime:
    """How the test drives one runtime kind."""

    kind: str
    env: dict[str, str]
    artifact: Callable[[Path, HeldModel], Path]
    register: dict[str, str]  # model type and runtime, as registerModel takes them
    server_pids: Callable[[int], list[int]]


RUNTIMES = [
    Runtime("mlserver", {}, mlserver_artifact, {"model_type": "mlserver"}, runtime_pids),
    Runtime("triton", {"MESHLET_RUNTIMES": '["mlserver", "triton"]'}, triton_artifact,
            {"model_type": "triton", "runtime": "triton"}, tritonserver_pids),
]


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r.kind)
def test_runtime_killed_mid_load_answers_every_waiter(
    start_agent: StartAgent, tmp_path: Path, runtime: Runtime
) -> None:
    agent = start_agent(MESHLET_LOAD_TIMEOUT_S=str(LOAD_TIMEOUT_S), **runtime.env)
    mesh = MeshClient(agent.address)

    def load_with_deaths(name: str, deaths: int) -> tuple[list[str], HeldModel]:
        held = HeldModel(tmp_path / name)
        mesh.register(name, uri=str(runtime.artifact(tmp_path / name, held)),
                      **runtime.register)
        answers = kill_mid_load(agent, held, name, deaths, runtime.server_pids)
        assert max(t for _, t in answers) < LOAD_TIMEOUT_S
        return [outcome for outcome, _ in answers], held

    try:
        # Two deaths during one load: every waiter hears UNAVAILABLE, long before the timeout.
        outcomes, held = load_with_deaths("held-twice", 2)
        assert outcomes == ["StatusCode.UNAVAILABLE"] * WAITERS
        assert held.attempts() == 2
        wait_for(lambda: runtimes_up(agent, runtime.kind), timeout_s=LOAD_TIMEOUT_S,
                 what=f"{runtime.kind} back")

        # One death: the load is tried again on the restarted runtime, and all are served.
        outcomes, held = load_with_deaths("held-once", 1)
        assert outcomes == ["OK [7]"] * WAITERS
        assert held.attempts() == 2
    finally:
        mesh.close()
