"""GPU placement and eviction over scripted GPUs."""

from __future__ import annotations

import pytest

from agent.errors import CapacityExhausted, Code
from agent.resources.gpu import ScriptedGpus
from agent.resources.placement import (
    GpuModel,
    GpuPlan,
    GpuShortfall,
    format_bytes,
    gpu_process_env,
    plan_gpu,
)

GIB = 1 << 30
MIB = 1 << 20


def scripted(*free_gib: float, total_gib: float = 40, name: str = "A100") -> ScriptedGpus:
    """GPUs of ``total_gib`` each, with ``free_gib`` free on each (the rest held
    by processes we cannot see)."""
    gpus = ScriptedGpus()
    for free in free_gib:
        index = gpus.add_gpu(int(total_gib * GIB), name=name)
        gpus.set_other_used(index, int((total_gib - free) * GIB))
    return gpus


def model(model_id: str, gpu: int, size_gib: float, last_used: float, in_flight: int = 0
          ) -> GpuModel:
    return GpuModel(model_id, gpu, int(size_gib * GIB), last_used, in_flight)


def test_single_gpu_with_room_takes_the_model_without_evicting() -> None:
    gpus = scripted(10)
    plan = plan_gpu("m", 4 * GIB, gpus.gpus(), [model("old", 0, 2, 1.0)])
    assert plan == GpuPlan(0, (), 6 * GIB)


def test_of_several_gpus_with_room_the_one_with_most_free_memory_wins() -> None:
    gpus = scripted(5, 12, 9)
    assert plan_gpu("m", 4 * GIB, gpus.gpus(), []).gpu == 1


def test_equal_free_memory_goes_to_the_lowest_index() -> None:
    gpus = scripted(3, 8, 8)
    assert plan_gpu("m", 4 * GIB, gpus.gpus(), []).gpu == 1


def test_exact_fit_needs_no_eviction() -> None:
    gpus = scripted(4)
    assert plan_gpu("m", 4 * GIB, gpus.gpus(), [model("a", 0, 1, 1.0)]) == GpuPlan(0, (), 0)


def test_fragmented_free_memory_is_not_split_but_evicts_on_the_best_gpu() -> None:
    # 3 + 3 + 2 GiB free would hold 6 GiB together; no single GPU does.
    gpus = scripted(3, 3, 2)
    loaded = [
        model("g0-old", 0, 4, 1.0),  # GPU 0 would evict 4 GiB
        model("g1-old", 1, 1, 2.0),  # GPU 1 needs 3 GiB: 1 + 2 = 3 GiB, two models
        model("g1-new", 1, 2, 3.0),
        model("g2-old", 2, 3, 0.5),  # GPU 2 needs 4 GiB: 3 is not enough, then 5 more
        model("g2-new", 2, 5, 4.0),
    ]
    plan = plan_gpu("m", 6 * GIB, gpus.gpus(), loaded)
    assert plan == GpuPlan(1, ("g1-old", "g1-new"), 0)


def test_fewest_evicted_bytes_wins_over_more_free_memory() -> None:
    gpus = scripted(5, 1)
    loaded = [model("big", 0, 8, 1.0), model("small", 1, 6, 1.0)]
    plan = plan_gpu("m", 7 * GIB, gpus.gpus(), loaded)
    assert (plan.gpu, plan.evict) == (1, ("small",))


def test_equal_evicted_bytes_prefers_fewer_models_then_more_free_memory() -> None:
    gpus = scripted(2, 2, 3)
    loaded = [
        model("a1", 0, 2, 1.0), model("a2", 0, 2, 2.0),  # two models, 4 GiB
        model("b", 1, 4, 1.0),  # one model, 4 GiB
        model("c", 2, 4, 1.0),  # one model, 4 GiB, and more free memory
    ]
    plan = plan_gpu("m", 6 * GIB, gpus.gpus(), loaded)
    assert (plan.gpu, plan.evict, plan.spare_bytes) == (2, ("c",), 1 * GIB)


def test_eviction_follows_lru_order_not_inventory_order_or_size() -> None:
    gpus = scripted(1)
    loaded = [
        model("newest", 0, 10, 30.0),
        model("oldest", 0, 1, 10.0),
        model("middle", 0, 2, 20.0),
    ]
    # 1 free + 1 + 2 = 4 GiB: the two oldest go even though "newest" alone
    # would free more.
    plan = plan_gpu("m", 4 * GIB, gpus.gpus(), loaded)
    assert plan.evict == ("oldest", "middle")


def test_models_with_requests_in_flight_are_never_evicted() -> None:
    gpus = scripted(1)
    loaded = [
        model("busy-oldest", 0, 8, 1.0, in_flight=2),
        model("idle", 0, 2, 5.0),
        model("idle-newer", 0, 2, 6.0),
    ]
    plan = plan_gpu("m", 4 * GIB, gpus.gpus(), loaded)
    assert plan.evict == ("idle", "idle-newer")

    with pytest.raises(GpuShortfall) as caught:
        plan_gpu("m", 6 * GIB, gpus.gpus(), loaded)
    assert "8.0 GiB in models with requests in flight" in str(caught.value)


def test_inventory_sizes_decide_what_eviction_frees() -> None:
    # NVML says the runtime process holds 9 GiB (context, allocator cache),
    # the inventory says the idle model is 2 GiB: only 2 GiB count as freed.
    gpus = ScriptedGpus()
    gpus.add_gpu(10 * GIB)
    gpus.set_process_memory(0, 4242, 9 * GIB)
    loaded = [model("m2", 0, 2, 1.0)]
    assert plan_gpu("a", 3 * GIB, gpus.gpus(), loaded).evict == ("m2",)
    with pytest.raises(GpuShortfall):
        plan_gpu("b", 4 * GIB, gpus.gpus(), loaded)


def test_the_model_being_placed_and_models_on_unreadable_gpus_are_left_alone() -> None:
    gpus = scripted(1)
    loaded = [
        model("m", 0, 5, 1.0),  # a stale entry for the model being placed
        model("elsewhere", 7, 5, 0.5),  # a GPU NVML did not report this time
        model("other", 0, 3, 2.0),
    ]
    assert plan_gpu("m", 4 * GIB, gpus.gpus(), loaded).evict == ("other",)


def test_a_gpu_filling_up_under_us_changes_the_decision() -> None:
    gpus = scripted(20, 12)
    assert plan_gpu("a", 8 * GIB, gpus.gpus(), []).gpu == 0

    # Someone else's process takes 15 GiB of GPU 0 between two placements.
    gpus.set_process_memory(0, 999, 15 * GIB)
    assert plan_gpu("a", 8 * GIB, gpus.gpus(), []).gpu == 1

    # Then GPU 1 fills too: only evicting our own idle model on GPU 0 helps.
    gpus.set_other_used(1, 38 * GIB)
    loaded = [model("idle", 0, 6, 1.0)]
    assert plan_gpu("a", 8 * GIB, gpus.gpus(), loaded) == GpuPlan(0, ("idle",), 3 * GIB)


def test_loads_in_flight_reserve_memory_nvml_does_not_see_yet() -> None:
    gpus = scripted(20, 12)
    sample = gpus.gpus()
    assert plan_gpu("b", 8 * GIB, sample, [], reserved={0: 10 * GIB}).gpu == 1
    # Both reserved: neither holds 8 GiB; the idle model on GPU 1 makes room.
    loaded = [model("idle", 1, 4, 1.0)]
    plan = plan_gpu("c", 8 * GIB, sample, loaded, reserved={0: 15 * GIB, 1: 8 * GIB})
    assert plan == GpuPlan(1, ("idle",), 0)


def test_headroom_is_kept_free_on_every_gpu() -> None:
    gpus = scripted(9, 8)
    sample = gpus.gpus()
    assert plan_gpu("m", 8 * GIB, sample, []).gpu == 0
    loaded = [model("idle1", 1, 2, 1.0)]
    plan = plan_gpu("m", 8 * GIB, sample, loaded, headroom_bytes=2 * GIB)
    assert plan == GpuPlan(1, ("idle1",), 0)
    with pytest.raises(GpuShortfall, match=r"plus 4\.0 GiB headroom per GPU"):
        plan_gpu("m", 8 * GIB, sample, loaded, headroom_bytes=4 * GIB)


def test_shortfall_names_the_model_and_every_gpu() -> None:
    gpus = ScriptedGpus()
    gpus.add_gpu(40 * GIB, name="A100")
    gpus.add_gpu(16 * GIB, name="T4")
    gpus.set_other_used(0, 38 * GIB)
    gpus.set_other_used(1, 15 * GIB)
    loaded = [
        model("idle", 0, 1.5, 1.0),
        model("busy", 1, 0.5, 1.0, in_flight=1),
    ]
    with pytest.raises(GpuShortfall) as caught:
        plan_gpu("m", 6 * GIB, gpus.gpus(), loaded, reserved={1: 512 * MIB})
    err = caught.value
    assert isinstance(err, CapacityExhausted)
    assert err.code is Code.RESOURCE_EXHAUSTED
    assert err.message == (
        "model 'm' needs 6.0 GiB of GPU memory; "
        "GPU 0 (A100, 40.0 GiB): 2.0 GiB free, 1.5 GiB more from idle models; "
        "GPU 1 (T4, 16.0 GiB): 1.0 GiB free, 512.0 MiB reserved for loads in flight, "
        "0 B more from idle models, 512.0 MiB in models with requests in flight; "
        "short by 2.5 GiB on GPU 0 at best"
    )
    assert err.short_bytes == int(2.5 * GIB)
    assert not err.larger_than_every_gpu
    assert [(r.index, r.usable_bytes, r.idle_bytes) for r in err.rooms] == [
        (0, 2 * GIB, int(1.5 * GIB)), (1, 512 * MIB, 0),
    ]


def test_shortfall_says_when_the_model_is_larger_than_any_gpu() -> None:
    gpus = scripted(16, total_gib=16, name="T4")
    with pytest.raises(GpuShortfall) as caught:
        plan_gpu("huge", 20 * GIB, gpus.gpus(), [])
    assert caught.value.larger_than_every_gpu
    assert str(caught.value).endswith(
        "short by 4.0 GiB on GPU 0 at best; the model is larger than any GPU here"
    )


@pytest.mark.parametrize("failing", [False, True])
def test_no_gpu_is_a_shortfall_too(failing: bool) -> None:
    gpus = ScriptedGpus()
    if failing:  # GPUs there, but NVML reads nothing
        gpus.add_gpu(40 * GIB)
        gpus.failing = True
    with pytest.raises(GpuShortfall) as caught:
        plan_gpu("m", 6 * GIB, gpus.gpus(), [model("x", 0, 1, 1.0)])
    assert caught.value.message == (
        "model 'm' needs 6.0 GiB of GPU memory, and this node has no GPU it can read"
    )
    assert caught.value.rooms == ()
    assert caught.value.short_bytes == 6 * GIB


@pytest.mark.parametrize(
    ("size", "headroom", "reserved", "match"),
    [
        (0, 0, {}, "size_bytes must be > 0"),
        (-1, 0, {}, "size_bytes must be > 0"),
        (GIB, -1, {}, "headroom_bytes"),
        (GIB, 0, {0: -1}, "reserved bytes on GPU 0"),
    ],
)
def test_nonsense_input_is_a_value_error(
    size: int, headroom: int, reserved: dict[int, int], match: str
) -> None:
    gpus = scripted(10)
    with pytest.raises(ValueError, match=match):
        plan_gpu("m", size, gpus.gpus(), [], headroom_bytes=headroom, reserved=reserved)


def test_inventory_entries_reject_negative_figures() -> None:
    with pytest.raises(ValueError, match="size_bytes"):
        GpuModel("m", 0, -1, 0.0)
    with pytest.raises(ValueError, match="in_flight"):
        GpuModel("m", 0, 1, 0.0, in_flight=-1)


def test_zero_size_inventory_entries_are_not_evicted_for_nothing() -> None:
    gpus = scripted(1)
    loaded = [model("unmeasured", 0, 0, 1.0), model("real", 0, 3, 2.0)]
    assert plan_gpu("m", 4 * GIB, gpus.gpus(), loaded).evict == ("real",)


def test_lru_ties_are_broken_by_model_id() -> None:
    gpus = scripted(0)
    loaded = [model("b", 0, 2, 1.0), model("a", 0, 2, 1.0)]
    assert plan_gpu("m", 2 * GIB, gpus.gpus(), loaded).evict == ("a",)


def test_process_env_binds_by_uuid() -> None:
    gpus = scripted(10, 10)
    assert gpu_process_env(gpus.gpus()[1]) == {"CUDA_VISIBLE_DEVICES": "GPU-scripted-1"}


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (6 * GIB, "6.0 GiB"),
     (3 * (1 << 40), "3.0 TiB"), (5000 * (1 << 40), "5000.0 TiB")],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text
