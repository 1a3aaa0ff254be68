"""One ``tritonserver`` process as the agent sees it.

A ``RuntimeProcess`` (see adapters/runtime_process.py) whose child is the
``tritonserver`` binary, on a loopback gRPC port with HTTP and metrics off, in
explicit model-control mode over the adapter's own repository. Its output
(Triton logs to stderr) reaches the agent's log line by line under the
process's name. Inference is a raw-bytes unary call on the same gRPC channel:
the request body is passed through, never decoded.

The server's Python-backend stubs and their shared-memory regions go with it,
however it ends:

* the supervised child is a guard (adapters/guard.py) that runs the server,
  dies with the agent, kills whatever the server leaves when it exits (stubs
  ignore SIGTERM and may hang for good once their server is gone), and removes
  the regions;
* the guard leads a process group of its own holding the server and the
  stubs, and every SIGKILL of ours (the liveness watchdog, ``kill``, the end
  of a stop's grace) goes to that group (``SupervisedProcess.process_group``);
* the regions carry a prefix unique to the work dir (shm.py); they are also
  removed here, before each spawn and after each exit, for when the guard was
  killed with its group or with the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from adapters import guard
from adapters.base import RuntimeOptions
from adapters.runtime_process import RuntimeProcess, free_ports, grpc_code
from adapters.triton import shm
from adapters.triton.install import TritonInstall
from agent.errors import RuntimeRequestFailed, RuntimeUnavailable

log = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Triton's own timeout on a Python-backend stub that does not answer it (its
# default: 30 s). It ends no stub that outlives its server: such a stub exits
# by itself only if it was idle, never if a request was in it (see
# adapters/guard.py, which kills it).
_STUB_TIMEOUT_S = 5

RawCall = Callable[..., "grpc.aio.UnaryUnaryCall[bytes, bytes]"]


class TritonProcess(RuntimeProcess):
    label = "triton"
    process_group = True  # the guard, the server and its stubs

    def __init__(
        self,
        name: str,
        options: RuntimeOptions,
        install: TritonInstall,
        repository: Path,
        on_models_lost: Callable[[RuntimeProcess, list[str]], None],
    ) -> None:
        self._install = install
        self._repository = repository
        self._infer: RawCall | None = None
        super().__init__(
            name, options, on_models_lost,
            # CUDA numbers GPUs as NVML does, so a placement's index means one GPU.
            env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **install.env},
            cwd=options.work_dir, logger=log,
        )
        self.shm_prefix = shm.region_prefix(options.work_dir)

    def _argv(self) -> list[str]:
        (self.grpc_port,) = free_ports(1)
        # Nothing of an earlier server is alive now (its group was swept), so
        # its regions, or those a SIGKILLed predecessor agent left, are stale.
        shm.remove_regions(self.shm_prefix)
        return guard.command(str(self._install.server), [
            f"--model-repository={self._repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={self._install.backends}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--exit-on-error=false",  # a bad model must not stop the server
            "--strict-readiness=false",  # ready while serving, whatever a model's state
            f"--exit-timeout-secs={max(1, int(self._options.stop_grace_s))}",
            f"--backend-config=python,stub-timeout-seconds={_STUB_TIMEOUT_S}",
            shm.backend_config(self.shm_prefix),
        ], os.getpid(), remove=[shm.pattern(self.shm_prefix)])  # fmt: skip

    async def _attach(self) -> None:
        channel = self.grpc_channel
        assert channel is not None
        self._infer = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    async def _detach(self) -> None:
        self._infer = None
        if self.pid is None:
            # It exited or was stopped, and its group is swept. Usually the guard
            # removed the regions already; not when it was SIGKILLed with the group.
            await asyncio.to_thread(shm.remove_regions, self.shm_prefix)

    async def infer(self, request: bytes) -> bytes:
        call = self._infer
        if call is None or not self.ready:
            raise RuntimeUnavailable(f"{self.name} is not running: {self.last_error}")
        try:
            response: bytes = await call(request)
        except asyncio.CancelledError:
            # Closing the channel (the server died) cancels its calls; only a
            # cancellation of our own task may propagate, or the client would
            # never get an answer.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise RuntimeUnavailable(f"{self.name} went away during the request") from None
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise RuntimeUnavailable(f"{self.name}: {err.details()}") from None
            raise RuntimeRequestFailed(grpc_code(err), err.details() or "") from None
        return response
