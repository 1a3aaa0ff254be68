"""The inference path: find the model a request names, load it if needed, forward.

The request stays serialized bytes from client to runtime; only its
``model_name`` is read (and rewritten when a header or vmodel renames the
model). A model already loaded costs a dict lookup, an LRU touch and the
runtime call.

In a cluster (``peers`` set, ``agent.cluster.routing``), a model not loaded
here goes to a peer holding a copy; a model loaded nowhere goes where
placement puts it, with a load-here marker (this node, when it has the most
room). A forward that fails before a runtime answered (the peer died, or is
draining) is tried on the next copy or node; when none is left the model is
loaded here. A request forwarded to this node is served here unless the copy
it was sent to is gone and another node holds one (at most ``max_hops``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent import wire
from agent.cluster.forward import retryable
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

if TYPE_CHECKING:
    from agent.cluster.routing import ClusterRouting

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
        self.peers: ClusterRouting | None = None
        self.draining = False  # stop placing new loads here (set on drain)
        self.in_flight = 0  # requests being answered by this node's runtimes
        self.on_served: Callable[[str], None] | None = None  # copies follow load

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
        self, request: bytes, model_id: str | None = None, vmodel_id: str | None = None,
        hops: int = 0, load_here: bool = False,
    ) -> bytes:
        name = wire.read_model_name(request)
        if model_id or vmodel_id:
            target = self.resolve(name, model_id, vmodel_id)
        else:
            target = name if name in self._inventory else self.resolve(name)
        if target != name:
            request = wire.replace_model_name(request, target)
        if (self.peers is not None and not load_here and target not in self._inventory
                and not self._models.is_loading(target)):
            response = await self._via_peers(self.peers, target, request, hops)
            if response is not None:
                return response
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

    async def serve_forwarded(
        self, request: bytes, model_id: str, hops: int, load_here: bool
    ) -> bytes:
        """A request a peer forwarded here (``agent.cluster.forward``)."""
        return await self.infer(request, model_id, hops=hops, load_here=load_here)

    async def _via_peers(
        self, peers: ClusterRouting, model_id: str, request: bytes, hops: int
    ) -> bytes | None:
        """Answer from a peer's copy, or from the node placement picks; ``None``:
        serve it here."""
        tried: set[str] = set()
        while True:
            load_here = False
            copies = peers.copies(model_id, exclude=tried) if hops < peers.max_hops else []
            if copies:
                peer: str | None = copies[0]
            elif hops == 0:
                peer, load_here = self._place(peers, model_id, tried), True
            else:
                peer = None
            if peer is None:
                return None
            try:
                return await peers.forward(peer, model_id, request, hops, load_here)
            except Exception as err:
                if not retryable(err):
                    raise
                peers.retries += 1
                tried.add(peer)

    def _place(self, peers: ClusterRouting, model_id: str, tried: set[str]) -> str | None:
        spec = self._registry.get(model_id)
        if spec is None:
            return None  # NOT_FOUND from the local path
        size = self._registry.measured_size(model_id, spec.runtime) or spec.size_hint
        exclude = tried | {peers.address} if self.draining else tried
        return peers.place(spec, size, exclude=exclude)

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
        if self.on_served is not None:
            self.on_served(model_id)
        model.in_flight += 1
        self.in_flight += 1
        try:
            return await model.adapter.infer(model_id, request)
        finally:
            model.in_flight -= 1
            self.in_flight -= 1

