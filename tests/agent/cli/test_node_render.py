"""``meshlet node``'s tables, from a status message (GPU rows included)."""

from __future__ import annotations

from agent.cli.node import render
from agent.proto import meshlet_pb2 as pb


def test_render_with_gpus_and_an_unavailable_runtime() -> None:
    status = pb.NodeStatusResponse(
        node="n1", budget_bytes=8 * 2**30, used_bytes=3 * 2**30, models_loaded=2,
        memory_limit_bytes=16 * 2**30, memory_available_bytes=10 * 2**30, cpu_limit_cores=1.5,
        runtimes={"mlserver": "", "triton": "tritonserver not found"},
    )
    status.processes.add(runtime="triton", pid=42, models=2, rss_bytes=900 * 2**20,
                         gpu_bytes=5 * 2**30)
    status.gpus.add(index=0, name="NVIDIA H100 80GB HBM3", total_bytes=80 * 2**30,
                    used_bytes=6 * 2**30, free_bytes=74 * 2**30, meshlet_bytes=5 * 2**30)
    status.top_models.add(model_id="big", runtime="triton", size_bytes=2 * 2**30, in_flight=3)
    text = "\n".join(render(status))
    assert "budget:   8.0 GiB; used 3.0 GiB by 2 models; free 5.0 GiB" in text
    assert "CPU limit 1.5 cores" in text
    assert "runtime:  triton: unavailable: tritonserver not found" in text
    assert "triton           42       2   900.0 MiB     5.0 GiB" in text
    assert "0    NVIDIA H100 80GB HBM3       80.0 GiB     6.0 GiB    74.0 GiB     5.0 GiB" in text
    assert "big" in text and "2.0 GiB" in text


def test_counts_of_one_are_singular() -> None:
    status = pb.NodeStatusResponse(budget_bytes=2**30, used_bytes=2**20, models_loaded=1,
                                   cpu_limit_cores=1.0)
    text = "\n".join(render(status))
    assert "used 1.0 MiB by 1 model; free" in text
    assert "CPU limit 1 core\n" in text
