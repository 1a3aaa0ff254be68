"""The demo models: ``simple-string-0`` ... ``simple-string-{N-1}``.

Built into meshlet (``builtin://simple-string``), so the demo and the
benchmarks need no storage. Registering is idempotent: a model already
registered with the same spec is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.registry.spec import ModelSpec

DEMO_PREFIX = "simple-string-"
SIMPLE_STRING_URI = "builtin://simple-string"
SIMPLE_STRING_TYPE = "simple-string"


def simple_string_spec(model_id: str, runtime: str = "mlserver") -> ModelSpec:
    return ModelSpec(model_id, SIMPLE_STRING_URI, runtime, SIMPLE_STRING_TYPE)


def demo_specs(count: int, runtime: str = "mlserver") -> Iterator[ModelSpec]:
    for i in range(count):
        yield simple_string_spec(f"{DEMO_PREFIX}{i}", runtime)
