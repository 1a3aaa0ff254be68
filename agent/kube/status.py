"""What a resource's status says, in each kind's own shape (pure).

``Observed`` is the cluster-wide state of one resource as its status writer
sees it (``agent.kube.status_writer`` gathers it): its vmodel's transition,
the active and target models with their copies (counted as ModelMesh's
``getModelStatus`` counts them: ``agent.api.mmesh.model_status_info``), and any
problem with the resource itself (an invalid spec, a name conflict).

The shapes:

- ``Model``: ``state`` (Pending, Loading, Loaded, FailedToLoad, InvalidSpec),
  ``copies``, ``failedCopies``, ``lastFailure {reason, message, node, time}``,
  a ``Ready`` condition and ``observedGeneration``. A model registered but not
  loaded anywhere is Pending and Ready: meshlet loads it on its first request.
- ``Predictor``: ModelMesh's ``available``, ``activeModelState``,
  ``targetModelState``, ``transitionStatus``, ``totalCopies``,
  ``failedCopies``, ``lastFailureInfo {reason, message, modelId, location, time}``
  (states Pending, Standby, Loading, Loaded, FailedToLoad).
- ``InferenceService``: the same under ``modelStatus {states, transitionStatus,
  copies, lastFailureInfo}``, plus a ``Ready`` condition.

Keys whose value is None are sent as JSON null, which a merge patch deletes.
``digest`` compares a status without its timestamps, so an unchanged status
is never written again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

NAME_CONFLICT = "NameConflict"

# ModelMesh's ModelStatusInfo states -> ModelMesh-serving's model states.
MM_STATES = {
    "NOT_FOUND": "Pending", "NOT_LOADED": "Standby", "LOADING": "Loading", "LOADED": "Loaded",
    "LOADING_FAILED": "FailedToLoad",
}
# VModelStatusInfo states -> transitionStatus.
TRANSITIONS = {
    "NOT_FOUND": "UpToDate", "DEFINED": "UpToDate", "TRANSITIONING": "InProgress",
    "TRANSITION_FAILED": "BlockedByFailedLoad",
}
SERVING = ("NOT_LOADED", "LOADING", "LOADED")  # states in which requests are answered
TIME_KEYS = frozenset({"time", "lastTransitionTime"})


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a resource is not served as it asks: ``reason`` InvalidSpec,
    NoSupportingRuntime, RuntimeNotRecognized or NameConflict."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Copies:
    """One concrete model cluster-wide."""

    model_id: str
    state: str  # ModelMesh's ModelStatusInfo state name (LOADED when any copy is)
    loaded: int = 0
    loading: int = 0
    failed: int = 0
    failure: str = ""  # the last load failure's message
    failure_location: str = ""
    failure_time: float = 0.0  # epoch seconds


@dataclass(frozen=True, slots=True)
class Observed:
    generation: int  # the spec this status describes (observedGeneration)
    vmodel: str  # VModelState name: NOT_FOUND, DEFINED, TRANSITIONING, TRANSITION_FAILED
    active: Copies | None = None
    target: Copies | None = None  # only while the vmodel moves to another model
    problem: Problem | None = None
    node: str = ""  # the writing node, for failures it reports itself
    now: float = 0.0
    ready_before: bool | None = None  # the Ready condition as last written
    ready_since: int = 0  # and its lastTransitionTime, epoch seconds (0: none)


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> int:
    """An RFC 3339 timestamp (``2026-01-02T03:04:05Z``) as epoch seconds; 0 if absent."""
    if not isinstance(value, str) or not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _ready_condition(o: Observed, ready: bool, reason: str, message: str) -> dict[str, Any]:
    since = rfc3339(o.ready_since if o.ready_before is ready and o.ready_since else o.now)
    return {"type": "Ready", "status": "True" if ready else "False", "reason": reason,
            "message": message, "lastTransitionTime": since}


def _serving(o: Observed) -> bool:
    return o.active is not None and o.active.state in SERVING


# --- meshlet's Model --------------------------------------------------------------


def model_status(o: Observed) -> dict[str, Any]:
    active, target = o.active, o.target
    failure: dict[str, Any] | None = None
    if o.problem is not None and o.problem.reason == NAME_CONFLICT:
        state, ready, reason, message = "FailedToLoad", False, NAME_CONFLICT, o.problem.message
        failure = {"reason": NAME_CONFLICT, "message": o.problem.message, "node": o.node,
                   "time": rfc3339(o.now)}
        active = target = None
    elif o.problem is not None:
        ready = _serving(o)
        state, reason = "InvalidSpec", o.problem.reason
        message = o.problem.message + ("; the previous spec is still served" if ready else "")
        failure = {"reason": o.problem.reason, "message": o.problem.message, "node": o.node,
                   "time": rfc3339(o.now)}
    elif active is None:
        state, ready, reason, message = "Pending", False, "Pending", "not registered yet"
    else:
        head = target or active
        state = {"NOT_LOADED": "Loading" if target else "Pending", "LOADING": "Loading",
                 "LOADED": "Loaded", "LOADING_FAILED": "FailedToLoad"}.get(head.state, "Pending")
        ready = _serving(o)
        reason = {"NOT_LOADED": "Standby", "LOADING": "Loading", "LOADED": "Loaded",
                  "LOADING_FAILED": "FailedToLoad"}.get(active.state, "Pending")
        message = _model_message(active, target)
        if head.failure and head.state != "LOADED":
            failure = {"reason": "ModelLoadFailed", "message": head.failure,
                       "node": head.failure_location, "time": rfc3339(head.failure_time)}
    copies = active.loaded if active is not None else 0
    failed = sum(c.failed for c in (active, target) if c is not None)
    return {
        "state": state, "copies": copies, "failedCopies": failed, "lastFailure": failure,
        "conditions": [_ready_condition(o, ready, reason, message)],
        "observedGeneration": o.generation,
    }


def _model_message(active: Copies, target: Copies | None) -> str:
    copies = f"{active.loaded} cop{'y' if active.loaded == 1 else 'ies'} loaded"
    text = {
        "NOT_LOADED": f"{active.model_id} is registered and loads on its first request",
        "LOADING": f"{active.model_id} is loading",
        "LOADED": f"{active.model_id}: {copies}",
        "LOADING_FAILED": f"{active.model_id} failed to load",
    }.get(active.state, active.model_id)
    if target is not None:
        text += f"; moving to {target.model_id} once it loads ({MM_STATES[target.state]})"
    return text


# --- ModelMesh's Predictor and InferenceService ------------------------------------


def _modelmesh(o: Observed) -> tuple[str, str, str, int, int, dict[str, Any] | None]:
    """(activeModelState, targetModelState, transitionStatus, totalCopies,
    failedCopies, lastFailureInfo) as ModelMesh-serving sets them."""
    failure: dict[str, Any] | None = None
    if o.problem is not None:
        conflict = o.problem.reason == NAME_CONFLICT
        reason = "InvalidPredictorSpec" if o.problem.reason in ("InvalidSpec", NAME_CONFLICT) \
            else o.problem.reason
        failure = {"reason": reason, "message": o.problem.message, "time": rfc3339(o.now)}
        if conflict or o.active is None:
            return ("FailedToLoad" if conflict else "Pending"), "", "InvalidSpec", 0, 0, failure
        return (MM_STATES[o.active.state], "", "InvalidSpec", o.active.loaded, o.active.failed,
                failure)
    if o.active is None:
        return "Pending", "", "UpToDate", 0, 0, None
    target = o.target
    head = target or o.active
    if head.failure and head.state != "LOADED":
        failure = {"reason": "ModelLoadFailed", "message": head.failure, "modelId": head.model_id,
                   "location": head.failure_location, "time": rfc3339(head.failure_time)}
    failed = o.active.failed + (target.failed if target else 0)
    return (MM_STATES[o.active.state], MM_STATES[target.state] if target else "",
            TRANSITIONS.get(o.vmodel, "UpToDate"), o.active.loaded, failed, failure)


def predictor_status(o: Observed) -> dict[str, Any]:
    active, target, transition, total, failed, failure = _modelmesh(o)
    return {
        "available": active in ("Standby", "Loading", "Loaded"),
        "activeModelState": active, "targetModelState": target,
        "transitionStatus": transition, "totalCopies": total, "failedCopies": failed,
        "lastFailureInfo": failure,
    }


def inference_service_status(o: Observed) -> dict[str, Any]:
    active, target, transition, total, failed, failure = _modelmesh(o)
    ready = active in ("Standby", "Loading", "Loaded")
    return {
        "modelStatus": {
            "states": {"activeModelState": active, "targetModelState": target},
            "transitionStatus": transition,
            "copies": {"totalCopies": total, "failedCopies": failed},
            "lastFailureInfo": failure,
        },
        "conditions": [_ready_condition(o, ready, active, f"active model {active}")],
    }


# --- comparing ----------------------------------------------------------------------


def digest(status: Mapping[str, Any], keys: frozenset[str] | None = None) -> int:
    """A hash of ``status`` (only ``keys`` at the top, when given) without its
    timestamps and null values: equal for a status and the object it was written to."""
    picked = {k: v for k, v in status.items() if keys is None or k in keys}
    return hash(json.dumps(_strip(picked), sort_keys=True, separators=(",", ":")))


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if k not in TIME_KEYS and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def ready_of(status: Mapping[str, Any]) -> tuple[bool | None, int]:
    """The Ready condition of a status as written: (ready, lastTransitionTime in
    epoch seconds)."""
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        for condition in conditions:
            if isinstance(condition, Mapping) and condition.get("type") == "Ready":
                since = parse_time(condition.get("lastTransitionTime"))
                return condition.get("status") == "True", since
    return None, 0
