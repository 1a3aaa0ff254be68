"""vmodels: aliases that move between concrete models without downtime.

ModelMesh's semantics. A vmodel has an *active* model (takes its traffic) and a
*target* (where it is heading). ``set`` on a new vmodel makes the target active
at once. ``set`` on an existing vmodel with a new target starts a transition:
the target is loaded, and only once it is loaded does it become active, so a
client never reaches a model that is not ready. ``force`` switches at once. A
target that fails to load leaves the vmodel TRANSITION_FAILED and is retried
every ``vmodel_retry_interval_s``. Models registered through a vmodel with
``auto_delete`` are unregistered once no vmodel refers to them. Transitions
are persisted (active != target in the registry) and resumed after a restart.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from agent.errors import AlreadyExists, MeshletError, ModelNotFound, StateConflict, VModelNotFound
from agent.models import ModelService, ModelStatus
from agent.registry.spec import ModelSpec, validate_model_id
from agent.registry.store import ModelRegistry, VModel

log = logging.getLogger(__name__)


class VModelState(enum.Enum):
    """Numbered as ModelMesh's ``VModelStatusInfo.VModelStatus``."""

    NOT_FOUND = 0
    DEFINED = 1
    TRANSITIONING = 2
    TRANSITION_FAILED = 3


@dataclass(frozen=True)
class VModelStatus:
    vmodel_id: str
    state: VModelState
    active: str = ""
    target: str = ""
    owner: str = ""
    active_status: ModelStatus | None = None
    target_status: ModelStatus | None = None


class VModels:
    def __init__(
        self, registry: ModelRegistry, models: ModelService, retry_interval_s: float
    ) -> None:
        self._registry = registry
        self._models = models
        self._retry_interval_s = retry_interval_s
        self._transitions: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, str] = {}  # vmodel id -> why its target failed

    # --- routing -------------------------------------------------------------

    def active_or_none(self, vmodel_id: str) -> str | None:
        vmodel = self._registry.get_vmodel(vmodel_id)
        return vmodel.active if vmodel else None

    def active_target(self, vmodel_id: str) -> str:
        active = self.active_or_none(vmodel_id)
        if active is None:
            raise VModelNotFound(vmodel_id)
        return active

    # --- management ----------------------------------------------------------

    async def set(
        self,
        vmodel_id: str,
        target: str,
        *,
        owner: str = "",
        update_only: bool = False,
        spec: ModelSpec | None = None,
        auto_delete: bool = False,
        load_now: bool = False,
        force: bool = False,
        sync: bool = False,
        expected_target: str = "",
    ) -> VModelStatus:
        validate_model_id(vmodel_id, "vmodel id")
        validate_model_id(target, "target model id")
        current = self._registry.get_vmodel(vmodel_id)
        if current is None and update_only:
            raise VModelNotFound(vmodel_id)
        if current is not None and owner and current.owner and current.owner != owner:
            raise AlreadyExists(
                f"vmodel {vmodel_id!r} belongs to owner {current.owner!r}, not {owner!r}"
            )
        if expected_target:
            self._check_expected(vmodel_id, current, target, expected_target)
        if spec is not None:
            await self._models.register(spec, auto_delete=auto_delete)
        elif self._registry.get(target) is None:
            raise ModelNotFound(target)

        if current is None:
            self._registry.put_vmodel(VModel(vmodel_id, target, target, owner))
            if load_now:
                if sync:
                    await self._models.ensure_loaded(target)
                else:
                    self._models.load_in_background(target)
            return self.status(vmodel_id)

        if current.target == target and current.active == target:
            return self.status(vmodel_id)
        if force or current.active == target:
            previous = current.active
            self._registry.put_vmodel(VModel(vmodel_id, target, target, current.owner))
            self._failures.pop(vmodel_id, None)
            await self._release(previous, vmodel_id)
            return self.status(vmodel_id)

        superseded = current.target if current.target != current.active else None
        self._registry.put_vmodel(VModel(vmodel_id, current.active, target, current.owner))
        self._failures.pop(vmodel_id, None)
        if superseded is not None and superseded != target:
            await self._release(superseded, vmodel_id)
        task = self._start_transition(vmodel_id)
        if sync:
            await self._models.ensure_loaded(target)  # raises the load's error
            await asyncio.shield(task)
        return self.status(vmodel_id)

    def _check_expected(
        self, vmodel_id: str, current: VModel | None, target: str, expected: str
    ) -> None:
        if expected == target:
            if current is None or current.target == target:
                return
        elif current is not None and current.target == expected:
            return
        have = current.target if current else "(no vmodel)"
        raise StateConflict(
            f"vmodel {vmodel_id!r}: expected target {expected!r}, but it is {have!r}"
        )

    async def delete(self, vmodel_id: str, owner: str = "") -> None:
        current = self._registry.get_vmodel(vmodel_id)
        if current is None:
            return  # deleting what is not there is not an error (as ModelMesh)
        if owner and current.owner != owner:
            raise VModelNotFound(vmodel_id)
        task = self._transitions.pop(vmodel_id, None)
        if task is not None:
            task.cancel()
        self._registry.delete_vmodel(vmodel_id)
        self._failures.pop(vmodel_id, None)
        for model_id in {current.active, current.target}:
            await self._release(model_id, vmodel_id)

    def status(self, vmodel_id: str, owner: str = "") -> VModelStatus:
        vmodel = self._registry.get_vmodel(vmodel_id)
        if vmodel is None or (owner and vmodel.owner != owner):
            return VModelStatus(vmodel_id, VModelState.NOT_FOUND)
        if not vmodel.transitioning:
            state = VModelState.DEFINED
        elif vmodel_id in self._failures:
            state = VModelState.TRANSITION_FAILED
        else:
            state = VModelState.TRANSITIONING
        return VModelStatus(
            vmodel_id,
            state,
            vmodel.active,
            vmodel.target,
            vmodel.owner,
            self._models.status(vmodel.active),
            self._models.status(vmodel.target) if vmodel.transitioning else None,
        )

    # --- transitions ---------------------------------------------------------

    def resume(self) -> None:
        """Restart transitions that were under way when the agent stopped."""
        for vmodel in self._registry.transitioning_vmodels():
            self._start_transition(vmodel.vmodel_id)

    def _start_transition(self, vmodel_id: str) -> asyncio.Task[None]:
        task = self._transitions.get(vmodel_id)
        if task is None or task.done():
            task = asyncio.create_task(self._transition(vmodel_id), name=f"vmodel:{vmodel_id}")
            self._transitions[vmodel_id] = task
        return task

    async def _transition(self, vmodel_id: str) -> None:
        try:
            while True:
                vmodel = self._registry.get_vmodel(vmodel_id)
                if vmodel is None or not vmodel.transitioning:
                    return
                try:
                    await self._models.ensure_loaded(vmodel.target)
                except MeshletError as err:
                    self._failures[vmodel_id] = err.message
                    log.warning("vmodel %s: target %s failed: %s", vmodel_id, vmodel.target,
                                err.message)
                    await asyncio.sleep(self._retry_interval_s)
                    continue
                now = self._registry.get_vmodel(vmodel_id)
                if now is None or now.target != vmodel.target:
                    continue  # moved again while loading
                self._registry.put_vmodel(VModel(vmodel_id, now.target, now.target, now.owner))
                self._failures.pop(vmodel_id, None)
                log.info("vmodel %s now serves %s (was %s)", vmodel_id, now.target, now.active)
                await self._release(now.active, vmodel_id)
                return
        finally:
            if self._transitions.get(vmodel_id) is asyncio.current_task():
                del self._transitions[vmodel_id]

    async def _release(self, model_id: str, vmodel_id: str) -> None:
        """Unregister an auto-delete model once no vmodel refers to it any more."""
        if not self._registry.is_auto_delete(model_id):
            return
        if self._registry.vmodels_referencing(model_id):
            return
        log.info("vmodel %s no longer refers to %s: deleting it", vmodel_id, model_id)
        await self._models.unregister(model_id)

    async def stop(self) -> None:
        tasks = list(self._transitions.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
