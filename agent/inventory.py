"""What this node holds right now: loaded models in least-recently-used order.

Memory only; after an agent restart it starts empty and fills on demand. The
request path touches it on every request, so each operation is O(1): an
OrderedDict keeps LRU order (``touch`` moves a model to the recent end).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from adapters.base import RuntimeAdapter
from agent.artifacts import Artifact
from agent.registry.spec import ModelSpec


@dataclass(slots=True, eq=False)
class LoadedModel:
    spec: ModelSpec
    adapter: RuntimeAdapter
    size_bytes: int
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0
    artifact: Artifact | None = None  # its files, held while it is loaded
    predicted_bytes: int = 0  # what the runtime predicted before its load
    gpu: int | None = None  # the GPU (NVML index) it was placed on


InventoryListener = Callable[[str, "LoadedModel | None"], None]
"""``listener(model_id, model)``: a model was added (``model``) or removed (``None``)."""


class Inventory:
    def __init__(self) -> None:
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.used_bytes = 0
        self._listeners: list[InventoryListener] = []

    def on_change(self, listener: InventoryListener) -> None:
        """Call ``listener`` on every add and remove (the cluster gossips them)."""
        self._listeners.append(listener)

    def _changed(self, model_id: str, model: LoadedModel | None) -> None:
        for listener in self._listeners:
            listener(model_id, model)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def get(self, model_id: str) -> LoadedModel | None:
        return self._models.get(model_id)

    def touch(self, model_id: str) -> None:
        self._models.move_to_end(model_id)

    def add(self, model: LoadedModel) -> None:
        old = self._models.pop(model.spec.model_id, None)
        if old is not None:
            self.used_bytes -= old.size_bytes
        self._models[model.spec.model_id] = model
        self.used_bytes += model.size_bytes
        self._changed(model.spec.model_id, model)

    def remove(self, model_id: str) -> LoadedModel | None:
        model = self._models.pop(model_id, None)
        if model is not None:
            self.used_bytes -= model.size_bytes
            self._changed(model_id, None)
        return model

    def remove_many(self, model_ids: Iterable[str]) -> list[LoadedModel]:
        return [m for model_id in model_ids if (m := self.remove(model_id)) is not None]

    def idle_lru(self) -> Iterator[LoadedModel]:
        """Loaded models with no request in flight, least recently used first."""
        return (m for m in self._models.values() if m.in_flight == 0)

    def on_gpus(self) -> Iterator[tuple[int, LoadedModel]]:
        """(LRU rank, model) of the models placed on GPUs, least recently used first."""
        return ((rank, m) for rank, m in enumerate(self._models.values()) if m.gpu is not None)

    def largest(self, n: int) -> list[LoadedModel]:
        """The ``n`` loaded models taking the most bytes, largest first."""
        return heapq.nlargest(n, self._models.values(), key=lambda m: m.size_bytes)

    def ids(self) -> list[str]:
        return list(self._models)
