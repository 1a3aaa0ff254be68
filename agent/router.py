"""The inference path: find the model a request names, load it if needed, forward.

The request stays serialized bytes from client to runtime; only its
``model_name`` is read (and rewritten when a header or vmodel renames the
model). A model already loaded costs a dict lookup, an LRU touch and the
runtime call.
"""

from __future__ import annotations

from agent import wire
from agent.errors import (
    CapacityExhausted,
    Code,
    ModelNotFound,
    RuntimeRequestFailed,
    RuntimeUnavailable,
)
from agent.inventory import Inventory
from agent.models import ModelService
from agent.registry.store import ModelRegistry
from agent.vmodels import VModels

_LOAD_ATTEMPTS = 3


class Router:
    def __init__(
        self,
        registry: ModelRegistry,
        inventory: Inventory,
        models: ModelService,
        vmodels: VModels,
    ) -> None:
        self._registry = registry
        self._inventory = inventory
        self._models = models
        self._vmodels = vmodels

    def resolve(self, name: str, model_id: str | None = None, vmodel_id: str | None = None) -> str:
        """The concrete model id a request means.

        The ``mm-vmodel-id`` header wins, then ``mm-model-id``, then the request's
        model name, which may itself be a vmodel id.
        """
        if vmodel_id:
            return self._vmodels.active_target(vmodel_id)
        if model_id:
            return model_id
        if name in self._inventory or self._registry.get(name) is not None:
            return name
        active = self._vmodels.active_or_none(name)
        if active is None:
            raise ModelNotFound(name)
        return active

    async def infer(
        self, request: bytes, model_id: str | None = None, vmodel_id: str | None = None
    ) -> bytes:
        name = wire.read_model_name(request)
        if model_id or vmodel_id:
            target = self.resolve(name, model_id, vmodel_id)
        else:
            target = name if name in self._inventory else self.resolve(name)
        if target != name:
            request = wire.replace_model_name(request, target)
        try:
            return await self._forward(target, request)
        except RuntimeUnavailable:
            pass  # the runtime died under the request: it restarts, the model reloads
        except RuntimeRequestFailed as err:
            if err.code != Code.NOT_FOUND or target not in self._inventory:
                raise
            # The runtime lost the model (restarted) before we heard of it.
            await self._models.unload(target, reason="lost")
        return await self._forward(target, request)

    async def _forward(self, model_id: str, request: bytes) -> bytes:
        model = self._inventory.get(model_id)
        attempts = 0
        while model is None:
            # Another load may evict a model between its load and this task's
            # turn (under a budget that thrashes); load again a few times.
            if attempts == _LOAD_ATTEMPTS:
                raise CapacityExhausted(
                    f"model {model_id!r} was evicted {attempts} times before it could "
                    f"answer: the memory budget is too small for the working set"
                )
            attempts += 1
            await self._models.ensure_loaded(model_id)
            model = self._inventory.get(model_id)
        self._inventory.touch(model_id)
        model.in_flight += 1
        try:
            return await model.adapter.infer(model_id, request)
        finally:
            model.in_flight -= 1

