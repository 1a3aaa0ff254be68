"""Every error meshlet raises on purpose, and the status each one means.

Domain code raises these and never imports grpc; ``agent.api.status`` turns a
``Code`` into a ``grpc.StatusCode`` in one table. The tree::

    MeshletError
    ├── InvalidRequest                 INVALID_ARGUMENT
    │   ├── InvalidModelId             an id that could escape a path, or too long
    │   ├── InvalidStorageUri          a URI whose scheme no puller serves
    │   ├── InvalidSpec                a spec field that makes no sense
    │   └── InvalidTensor              a malformed input tensor
    ├── NotFound                       NOT_FOUND
    │   ├── ModelNotFound
    │   └── VModelNotFound
    ├── AlreadyExists                  ALREADY_EXISTS (vmodel owner mismatch)
    ├── StateConflict                  FAILED_PRECONDITION (vmodel expected target differs)
    ├── CapacityExhausted              RESOURCE_EXHAUSTED
    │   ├── ModelTooLarge              bigger than the whole budget
    │   └── RequestTooLarge
    ├── LoadFailed                     FAILED_PRECONDITION, carries the runtime's reason
    ├── PackageMissing                 FAILED_PRECONDITION: a model type's runtime package
    │                                  is not installed (names what to pip install)
    ├── RuntimeUnavailable             UNAVAILABLE: the runtime process is down/restarting
    │   └── RuntimeRestarted           it died while serving this call (a load may be retried)
    ├── RuntimeRequestFailed           the runtime's own status, passed through
    └── ShuttingDown                   UNAVAILABLE
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Status codes, numbered as gRPC numbers them (so a runtime's numeric
    status passes through unchanged)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_number(cls, number: int) -> Code:
        try:
            return cls(number)
        except ValueError:
            return cls.UNKNOWN


class MeshletError(Exception):
    """Base of every deliberate error; ``code`` says which status it maps to."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def prefixed(self, prefix: str) -> MeshletError:
        """A copy of this error (same class, same code) whose message starts with
        ``prefix``; the original is left alone (it may be shared by waiters)."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.message = f"{prefix}{self.message}"
        copy.args = (copy.message,)
        return copy


class InvalidRequest(MeshletError):
    code = Code.INVALID_ARGUMENT


class InvalidModelId(InvalidRequest):
    pass


class InvalidStorageUri(InvalidRequest):
    pass


class InvalidSpec(InvalidRequest):
    pass


class InvalidTensor(InvalidRequest):
    pass


class NotFound(MeshletError):
    code = Code.NOT_FOUND


class ModelNotFound(NotFound):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id!r} is not registered")
        self.model_id = model_id


class VModelNotFound(NotFound):
    def __init__(self, vmodel_id: str) -> None:
        super().__init__(f"vmodel {vmodel_id!r} does not exist")
        self.vmodel_id = vmodel_id


class AlreadyExists(MeshletError):
    code = Code.ALREADY_EXISTS


class StateConflict(MeshletError):
    code = Code.FAILED_PRECONDITION


class CapacityExhausted(MeshletError):
    code = Code.RESOURCE_EXHAUSTED


class ModelTooLarge(CapacityExhausted):
    pass


class RequestTooLarge(CapacityExhausted):
    pass


class LoadFailed(MeshletError):
    """The runtime refused or failed the load; ``message`` carries its reason."""

    code = Code.FAILED_PRECONDITION


class PackageMissing(MeshletError):
    """The runtime needs a Python package for the model's type that is not
    installed on this node; ``package`` is what to ``pip install``."""

    code = Code.FAILED_PRECONDITION

    def __init__(self, message: str, package: str) -> None:
        super().__init__(message)
        self.package = package


class RuntimeUnavailable(MeshletError):
    """The runtime process is not running (starting, restarting, or missing)."""

    code = Code.UNAVAILABLE


class RuntimeRestarted(RuntimeUnavailable):
    """The runtime process died while this call was in it; the supervisor
    restarts it, so a load may be tried again on the new process."""


class ShuttingDown(MeshletError):
    code = Code.UNAVAILABLE


class RuntimeRequestFailed(MeshletError):
    """A runtime answered a request with an error status; passed on as is."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
