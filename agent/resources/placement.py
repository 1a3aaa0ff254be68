"""Which GPU a GPU model goes to, and what must leave it first.

:func:`plan_gpu` is the whole decision, pure and synchronous: it reads one
sample of the GPUs (:class:`~agent.resources.gpu.GpuInfo`, as a
:class:`~agent.resources.gpu.GpuProbe` reports them), the GPU models the
agent's inventory holds (:class:`GpuModel`) and the bytes promised to loads
still in flight, and returns a :class:`GpuPlan` or raises
:class:`GpuShortfall`. It touches no process and no clock, so the loader can
call it under its lock, and tests can drive it from
:class:`~agent.resources.gpu.ScriptedGpus`.

The rules, in order:

1. A GPU's *usable* memory is what NVML reports free, less the bytes reserved
   on it for loads in flight (``reserved``: NVML does not see a load until its
   runtime allocates), less ``headroom_bytes`` (kept free on every GPU for
   CUDA contexts, activations and allocator slack). It may be negative.
2. If some GPUs have usable memory >= the model's size, the one with the most
   usable memory wins (ties: the lowest index). Nothing is evicted.
3. Otherwise, on each GPU, its idle models (no request in flight) are taken in
   least-recently-used order until usable + freed >= size. Among the GPUs where
   that works, the one that evicts the fewest bytes wins (ties: fewest models,
   then most usable memory, then lowest index). The model is never split
   across GPUs, however much memory all of them have together.
4. Otherwise :class:`GpuShortfall` (``RESOURCE_EXHAUSTED``) says, per GPU, its
   total, free, reserved and evictable memory, and how short the best GPU is.

What an eviction frees is the model's size *in the inventory* (measured as the
NVML delta when it loaded, or predicted before that), not what NVML attributes
to anything now: NVML only knows processes, and a runtime process holds many
models plus its CUDA context. The figure may be wrong either way (a caching
allocator such as PyTorch's may keep freed blocks from NVML), so a plan is an
intention: after evicting, the loader should sample the GPUs again and call
:func:`plan_gpu` once more before it commits to the load.

Models in ``loaded`` on a GPU missing from ``gpus`` (one NVML could not read
this time) are ignored, as is that GPU. A model already in ``loaded`` under
the id being placed is never planned for eviction. Inventory models of size 0
free nothing and are skipped.

:func:`gpu_process_env` gives the environment that binds a runtime process to
the chosen GPU. It names the GPU by UUID, not index: NVML numbers GPUs in PCI
bus order while CUDA, by default, numbers them fastest first, so an index can
name a different GPU to the runtime than to us.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.errors import CapacityExhausted

from .gpu import GpuInfo

_NO_RESERVATIONS: Mapping[int, int] = {}


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A model the inventory holds on a GPU now."""

    model_id: str
    gpu: int  # GpuInfo.index
    size_bytes: int  # measured (or predicted) GPU memory; what evicting it frees
    last_used: float  # any monotonic clock; only the order matters
    in_flight: int = 0  # requests running now; > 0 means never evicted

    def __post_init__(self) -> None:
        if self.size_bytes < 0:
            raise ValueError(f"model {self.model_id!r}: size_bytes {self.size_bytes} < 0")
        if self.in_flight < 0:
            raise ValueError(f"model {self.model_id!r}: in_flight {self.in_flight} < 0")


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """Load on ``gpu`` after unloading ``evict`` (model ids, oldest first).

    ``spare_bytes`` is the usable memory left on that GPU once the evictions
    and the load are done, by the inventory's figures (>= 0)."""

    gpu: int
    evict: tuple[str, ...] = ()
    spare_bytes: int = 0


@dataclass(frozen=True, slots=True)
class GpuRoom:
    """One GPU as :func:`plan_gpu` saw it, in bytes."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int  # NVML's figure
    reserved_bytes: int  # promised to loads in flight
    usable_bytes: int  # free - reserved - headroom; may be negative
    idle_bytes: int  # inventory bytes of models with no request in flight
    busy_bytes: int  # inventory bytes of models with requests in flight


class GpuShortfall(CapacityExhausted):
    """No GPU can hold the model, even after evicting every idle model on it.

    ``rooms`` lists every GPU seen (empty when the node has none it can read);
    ``short_bytes`` is how much the closest GPU lacks (``size_bytes`` when
    there is no GPU); ``larger_than_every_gpu`` is true when the model (plus
    headroom) exceeds every GPU's total, so retrying later cannot help.
    """

    def __init__(
        self, model_id: str, size_bytes: int, headroom_bytes: int, rooms: Sequence[GpuRoom]
    ) -> None:
        self.model_id = model_id
        self.size_bytes = size_bytes
        self.headroom_bytes = headroom_bytes
        self.rooms = tuple(rooms)
        self.short_bytes = min(
            (size_bytes - r.usable_bytes - r.idle_bytes for r in rooms), default=size_bytes
        )
        self.larger_than_every_gpu = all(
            size_bytes + headroom_bytes > r.total_bytes for r in rooms
        )
        super().__init__(self._describe())

    def _describe(self) -> str:
        need = f"model {self.model_id!r} needs {format_bytes(self.size_bytes)} of GPU memory"
        if self.headroom_bytes:
            need += f" (plus {format_bytes(self.headroom_bytes)} headroom per GPU)"
        if not self.rooms:
            return f"{need}, and this node has no GPU it can read"
        parts = [need]
        for r in self.rooms:
            part = (
                f"GPU {r.index} ({r.name}, {format_bytes(r.total_bytes)}): "
                f"{format_bytes(r.free_bytes)} free"
            )
            if r.reserved_bytes:
                part += f", {format_bytes(r.reserved_bytes)} reserved for loads in flight"
            part += f", {format_bytes(r.idle_bytes)} more from idle models"
            if r.busy_bytes:
                part += f", {format_bytes(r.busy_bytes)} in models with requests in flight"
            parts.append(part)
        best = min(self.rooms, key=lambda r: (-(r.usable_bytes + r.idle_bytes), r.index))
        tail = f"short by {format_bytes(self.short_bytes)} on GPU {best.index} at best"
        if self.larger_than_every_gpu:
            tail += "; the model is larger than any GPU here"
        parts.append(tail)
        return "; ".join(parts)


def plan_gpu(
    model_id: str,
    size_bytes: int,
    gpus: Sequence[GpuInfo],
    loaded: Sequence[GpuModel],
    headroom_bytes: int = 0,
    reserved: Mapping[int, int] = _NO_RESERVATIONS,
) -> GpuPlan:
    """The GPU for ``model_id`` (``size_bytes`` of GPU memory) and the models
    to unload there first; the rules are in this module's docstring.

    ``reserved`` maps a GPU index to bytes promised to loads in flight on it.
    Raises :class:`GpuShortfall` when no GPU can take the model, and
    ``ValueError`` for a size <= 0 or a negative headroom or reservation.
    """
    if size_bytes <= 0:
        raise ValueError(f"model {model_id!r}: size_bytes must be > 0, not {size_bytes}")
    if headroom_bytes < 0:
        raise ValueError(f"headroom_bytes must be >= 0, not {headroom_bytes}")
    for index, count in reserved.items():
        if count < 0:
            raise ValueError(f"reserved bytes on GPU {index} must be >= 0, not {count}")

    by_gpu: dict[int, list[GpuModel]] = {g.index: [] for g in gpus}
    for model in loaded:
        if model.gpu in by_gpu and model.model_id != model_id:
            by_gpu[model.gpu].append(model)

    rooms = [_room(g, by_gpu[g.index], headroom_bytes, reserved) for g in gpus]

    fits = [r for r in rooms if r.usable_bytes >= size_bytes]
    if fits:
        best = min(fits, key=lambda r: (-r.usable_bytes, r.index))
        return GpuPlan(best.index, (), best.usable_bytes - size_bytes)

    # (bytes evicted, models evicted, -usable, index) -> the plan
    options: list[tuple[tuple[int, int, int, int], GpuPlan]] = []
    for room in rooms:
        evict = _lru_victims(by_gpu[room.index], size_bytes - room.usable_bytes)
        if evict is None:
            continue
        freed = sum(m.size_bytes for m in evict)
        plan = GpuPlan(
            room.index,
            tuple(m.model_id for m in evict),
            room.usable_bytes + freed - size_bytes,
        )
        options.append(((freed, len(evict), -room.usable_bytes, room.index), plan))
    if options:
        return min(options, key=lambda option: option[0])[1]

    raise GpuShortfall(model_id, size_bytes, headroom_bytes, rooms)


def gpu_process_env(gpu: GpuInfo) -> dict[str, str]:
    """Environment variables that show a runtime process only ``gpu``.

    By UUID (``GPU-...``, or ``MIG-...`` for a MIG instance), which means the
    same device to NVML and to CUDA whatever the enumeration order; inside the
    process the GPU is then device 0."""
    return {"CUDA_VISIBLE_DEVICES": gpu.uuid}


def format_bytes(count: int) -> str:
    """``count`` bytes for people: ``512 B``, ``1.5 KiB``, ``6.0 GiB``."""
    if abs(count) < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _room(
    gpu: GpuInfo, models: Sequence[GpuModel], headroom_bytes: int, reserved: Mapping[int, int]
) -> GpuRoom:
    held = reserved.get(gpu.index, 0)
    return GpuRoom(
        index=gpu.index,
        name=gpu.name,
        total_bytes=gpu.total_bytes,
        free_bytes=gpu.free_bytes,
        reserved_bytes=held,
        usable_bytes=gpu.free_bytes - held - headroom_bytes,
        idle_bytes=sum(m.size_bytes for m in models if m.in_flight == 0),
        busy_bytes=sum(m.size_bytes for m in models if m.in_flight > 0),
    )


def _lru_victims(models: Sequence[GpuModel], needed: int) -> list[GpuModel] | None:
    """The least recently used idle models whose sizes add up to ``needed``
    (> 0), oldest first; None when all the idle ones together are not enough.
    Ties in ``last_used`` go by model id, so the plan does not depend on the
    inventory's order."""
    idle = sorted(
        (m for m in models if m.in_flight == 0 and m.size_bytes > 0),
        key=lambda m: (m.last_used, m.model_id),
    )
    victims: list[GpuModel] = []
    freed = 0
    for model in idle:
        if freed >= needed:
            break
        victims.append(model)
        freed += model.size_bytes
    return victims if freed >= needed else None
