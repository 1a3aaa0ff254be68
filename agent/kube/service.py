"""Builds the Kubernetes integration from its settings and runs it.

One ``Watcher`` per watched kind and namespace (every namespace: one per
kind), one ``ResourceSync`` they all feed, one ``StatusWriter``. The service
listens to what changes a status (registry writes, this node's loads and
unloads, copies on peers through ``model_changed``) and tells the writer.
``stop()`` stops the watchers first (no event is handled after it returns),
then the writer, then closes the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.inventory import Inventory, LoadedModel
from agent.kube.api import ApiError, ApiUnreachable, KubeApi
from agent.kube.config import KubeSettings, describe_source, load_api_client
from agent.kube.index import Index
from agent.kube.kinds import Kind, kinds_for
from agent.kube.ownership import MembersFn, Ownership
from agent.kube.status_writer import Observer, StatusWriter
from agent.kube.sync import ResourceSync
from agent.kube.watcher import Watcher, WatchSettings
from agent.models import ModelService
from agent.registry.store import MODEL_PREFIX, VMODEL_PREFIX, ModelRegistry, Write
from agent.storage.config import StorageConfig
from agent.vmodels import VModels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterView:
    """What the integration reads of the cluster."""

    self_id: str  # this node, as ``members()`` names it
    location: Callable[[], str]  # this node in copy lists and failure reports
    peer_copies: Callable[[str], Sequence[str]] = lambda model_id: ()  # live peers holding it
    members: MembersFn | None = None  # live members; None: this node runs alone


class StorageBuckets:
    """Storage key -> the ``bucket`` of its file in the storage-config directory,
    read again whenever the directory changes (a mounted Secret is updated by
    swapping a link in it)."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._stamp: int | None = None
        self._buckets: dict[str, str] = {}

    def __call__(self, key: str) -> str | None:
        if self._directory is None:
            return None
        try:
            stamp = os.stat(self._directory).st_mtime_ns
        except OSError:
            return None
        if stamp != self._stamp:
            config = StorageConfig.from_dir(self._directory)
            self._buckets = {k: e.bucket for k, e in config.entries.items() if e.bucket}
            self._stamp = stamp
        return self._buckets.get(key)


class KubeService:
    def __init__(
        self, settings: KubeSettings, registry: ModelRegistry, models: ModelService,
        vmodels: VModels, inventory: Inventory, cluster: ClusterView,
        failures: Callable[[], Mapping[str, tuple[float, str]]] = dict,
        api: KubeApi | None = None,
    ) -> None:
        """``failures()``: this node's load failures; ``api``: a client to use
        (default: one built from the settings at start)."""
        self.settings = settings
        self._registry = registry
        self._models = models
        self._vmodels = vmodels
        self._inventory = inventory
        self._cluster = cluster
        self._failures = failures
        self.api = api
        self.index = Index()
        self.ownership = Ownership(cluster.self_id, cluster.members, settings.settle_s)
        self.watchers: list[Watcher] = []
        self.sync: ResourceSync | None = None
        self.writer: StatusWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._running = False

    @property
    def scopes(self) -> list[tuple[Kind, str]]:
        s = self.settings
        return [(kind, ns) for kind in kinds_for(s.modelmesh_compat)
                for ns in (s.namespaces or [""])]

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.api is None:
            self.api = KubeApi(await asyncio.to_thread(load_api_client, s), s.request_timeout_s)
        api = self.api
        self.ownership.refresh()
        observer = Observer(self._models, self._vmodels, self._cluster.location,
                            self._cluster.peer_copies, self._failures)
        self.writer = StatusWriter(
            api, self.index, self.ownership, observer, s.status_interval_s,
            s.backoff_initial_s, s.backoff_max_s, self._failures, self._members_check,
        )
        self.sync = ResourceSync(
            self.index, self.ownership, self._vmodels, self._registry,
            StorageBuckets(s.storage_config_dir), self._fetch, self.writer.mark, self._relist,
        )
        scopes = self.scopes
        self.sync.expect(scopes)
        self._running = True
        self._registry.on_write(self._registry_written)
        self._inventory.on_change(self._inventory_changed)
        watch = WatchSettings(
            page_size=s.list_page_size, watch_timeout_s=s.watch_timeout_s,
            backoff_initial_s=s.backoff_initial_s, backoff_max_s=s.backoff_max_s,
            stop_timeout_s=s.request_timeout_s,
        )
        self.watchers = [Watcher(api, kind, ns, self.sync, watch, self._loop)
                         for kind, ns in scopes]
        for watcher in self.watchers:
            watcher.start()
        self.writer.start()
        log.info("kubernetes: on (%s); watching %s; status written every %.1f s by each "
                 "resource's owner", describe_source(s),
                 ", ".join(w.scope for w in self.watchers), s.status_interval_s)

    async def stop(self) -> None:
        """Stop the watchers, then the status writer; close the client. Safe twice."""
        if not self._running:
            return
        self._running = False
        await asyncio.gather(*(w.stop() for w in self.watchers))
        if self.writer is not None:
            await self.writer.stop()
        if self.api is not None:
            self.api.close()
        log.info("kubernetes: watchers stopped")

    def model_changed(self, model_id: str) -> None:
        """A model's copies changed somewhere (a peer loaded or dropped one)."""
        if self._running and self.writer is not None:
            self.writer.model_changed(model_id)

    # --- listeners ---------------------------------------------------------------------

    def _registry_written(self, writes: list[Write]) -> None:
        for key, _ in writes:
            if key.startswith(VMODEL_PREFIX):
                self._soon(self._mark, key[len(VMODEL_PREFIX):])
            elif key.startswith(MODEL_PREFIX):
                self._soon(self.model_changed, key[len(MODEL_PREFIX):])

    def _inventory_changed(self, model_id: str, model: LoadedModel | None) -> None:
        self._soon(self.model_changed, model_id)

    def _mark(self, name: str) -> None:
        if self._running and self.writer is not None:
            self.writer.mark(name)

    def _soon(self, fn: Callable[[str], None], arg: str) -> None:
        """Call on the loop (registry writes may come from worker threads)."""
        if threading.get_ident() == self._loop_thread:
            fn(arg)
        elif self._loop is not None and self._running:
            self._loop.call_soon_threadsafe(fn, arg)

    def _relist(self) -> None:
        for watcher in self.watchers:
            watcher.relist()

    async def _members_check(self) -> None:
        if self.sync is not None and not self.ownership.alone:
            await self.sync.members_changed()

    async def _fetch(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.api is not None
        try:
            return await asyncio.to_thread(self.api.get, kind, namespace, name)
        except (ApiError, ApiUnreachable) as err:
            log.warning("kube: cannot read %s %s/%s: %s", kind.name, namespace, name, err)
            return None
