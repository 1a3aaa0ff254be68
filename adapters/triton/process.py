"""One ``tritonserver`` process as the agent sees it.

A ``RuntimeProcess`` (see adapters/runtime_process.py) whose child is the
``tritonserver`` binary, started through ``adapters.pdeathsig`` so it dies
with the agent, on a loopback gRPC port with HTTP and metrics off, in
explicit model-control mode over the adapter's own repository. Its output
(Triton logs to stderr) reaches the agent's log line by line under the
process's name. Inference is a raw-bytes unary call on the same gRPC channel:
the request body is passed through, never decoded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from adapters import pdeathsig
from adapters.base import RuntimeOptions
from adapters.runtime_process import RuntimeProcess, free_ports, grpc_code
from adapters.triton.install import TritonInstall
from agent.errors import RuntimeRequestFailed, RuntimeUnavailable

log = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Python-backend stubs are told to exit when their server has been silent this
# long; lower than Triton's default so a SIGKILLed server leaves no stub long.
_STUB_TIMEOUT_S = 5

RawCall = Callable[..., "grpc.aio.UnaryUnaryCall[bytes, bytes]"]


class TritonProcess(RuntimeProcess):
    label = "triton"

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

    def _argv(self) -> list[str]:
        (self.grpc_port,) = free_ports(1)
        return pdeathsig.command(str(self._install.server), [
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
        ], os.getpid())  # fmt: skip

    async def _attach(self) -> None:
        channel = self.grpc_channel
        assert channel is not None
        self._infer = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    async def _detach(self) -> None:
        self._infer = None

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
