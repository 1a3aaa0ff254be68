"""The resource kinds meshlet serves, and what it reads of every object.

A ``Kind`` names the API (group, version, plural), the pure translation of its
objects (``agent.kube.translate``) and the shape its status is written in
(``agent.kube.status``). ``KINDS`` is the table; ``kinds_for`` picks the ones
a node watches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.kube import status as shapes
from agent.kube import translate
from agent.kube.status import parse_time

Obj = Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Kind:
    name: str  # "Model"
    group: str
    version: str
    plural: str
    translate: translate.Translator
    status: Callable[[shapes.Observed], dict[str, Any]]
    status_keys: frozenset[str]  # the top-level status keys meshlet writes

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def __repr__(self) -> str:
        return f"Kind({self.name})"


MODEL = Kind(
    "Model", "meshlet.io", "v1alpha1", "models", translate.model_entry, shapes.model_status,
    frozenset({"state", "copies", "failedCopies", "lastFailure", "conditions",
               "observedGeneration"}),
)
PREDICTOR = Kind(
    "Predictor", "serving.kserve.io", "v1alpha1", "predictors", translate.predictor_entry,
    shapes.predictor_status,
    frozenset({"available", "activeModelState", "targetModelState", "transitionStatus",
               "totalCopies", "failedCopies", "lastFailureInfo"}),
)
INFERENCE_SERVICE = Kind(
    "InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices",
    translate.inference_service_entry, shapes.inference_service_status,
    frozenset({"modelStatus", "conditions"}),
)

KINDS: dict[str, Kind] = {k.name: k for k in (MODEL, PREDICTOR, INFERENCE_SERVICE)}


def kinds_for(modelmesh_compat: bool) -> list[Kind]:
    return [MODEL, PREDICTOR, INFERENCE_SERVICE] if modelmesh_compat else [MODEL]


@dataclass(frozen=True, slots=True)
class Meta:
    """The metadata meshlet reads of an object."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    generation: int
    created: int  # creationTimestamp, epoch seconds
    deleting: bool  # deletionTimestamp is set


def meta_of(obj: Obj) -> Meta | None:
    """The object's metadata, or None when it is too malformed to name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, uid = meta.get("name"), meta.get("uid")
    if not isinstance(name, str) or not name or not isinstance(uid, str):
        return None
    generation = meta.get("generation")
    return Meta(
        name=name,
        namespace=sys.intern(str(meta.get("namespace") or "")),  # shared by every claim in it
        uid=uid,
        resource_version=str(meta.get("resourceVersion") or ""),
        generation=generation if isinstance(generation, int) else 0,
        created=parse_time(meta.get("creationTimestamp")),
        deleting=bool(meta.get("deletionTimestamp")),
    )
