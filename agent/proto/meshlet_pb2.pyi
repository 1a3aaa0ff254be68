from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrefetchRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class PrefetchResponse(_message.Message):
    __slots__ = ("digest", "size_bytes", "compressed_bytes", "already_cached")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CACHED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    compressed_bytes: int
    already_cached: bool
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., compressed_bytes: _Optional[int] = ..., already_cached: _Optional[bool] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterMember(_message.Message):
    __slots__ = ("address", "state", "incarnation", "grpc_address", "self", "models", "free_bytes", "draining", "in_flight")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: str
    incarnation: int
    grpc_address: str
    self: bool
    models: int
    free_bytes: int
    draining: bool
    in_flight: int
    def __init__(self_, address: _Optional[str] = ..., state: _Optional[str] = ..., incarnation: _Optional[int] = ..., grpc_address: _Optional[str] = ..., self: _Optional[bool] = ..., models: _Optional[int] = ..., free_bytes: _Optional[int] = ..., draining: _Optional[bool] = ..., in_flight: _Optional[int] = ...) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("members", "dropped")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[ClusterMember]
    dropped: _containers.ScalarMap[str, int]
    def __init__(self, members: _Optional[_Iterable[_Union[ClusterMember, _Mapping]]] = ..., dropped: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ModelSizeRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ModelSizeResponse(_message.Message):
    __slots__ = ("loaded", "size_bytes", "predicted_bytes", "measured_bytes", "runtime")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    loaded: bool
    size_bytes: int
    predicted_bytes: int
    measured_bytes: int
    runtime: str
    def __init__(self, loaded: _Optional[bool] = ..., size_bytes: _Optional[int] = ..., predicted_bytes: _Optional[int] = ..., measured_bytes: _Optional[int] = ..., runtime: _Optional[str] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ("top_models",)
    TOP_MODELS_FIELD_NUMBER: _ClassVar[int]
    top_models: int
    def __init__(self, top_models: _Optional[int] = ...) -> None: ...

class RuntimeProcessStatus(_message.Message):
    __slots__ = ("runtime", "pid", "models", "rss_bytes", "gpu_bytes")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_BYTES_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    pid: int
    models: int
    rss_bytes: int
    gpu_bytes: int
    def __init__(self, runtime: _Optional[str] = ..., pid: _Optional[int] = ..., models: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., gpu_bytes: _Optional[int] = ...) -> None: ...

class GpuStatus(_message.Message):
    __slots__ = ("index", "name", "total_bytes", "used_bytes", "free_bytes", "meshlet_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESHLET_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    meshlet_bytes: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., meshlet_bytes: _Optional[int] = ...) -> None: ...

class ModelSize(_message.Message):
    __slots__ = ("model_id", "runtime", "size_bytes", "in_flight")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    runtime: str
    size_bytes: int
    in_flight: int
    def __init__(self, model_id: _Optional[str] = ..., runtime: _Optional[str] = ..., size_bytes: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class NodeStatusResponse(_message.Message):
    __slots__ = ("node", "budget_bytes", "used_bytes", "models_loaded", "memory_limit_bytes", "memory_available_bytes", "cpu_limit_cores", "processes", "gpus", "top_models", "runtimes")
    class RuntimesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_LIMIT_CORES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    TOP_MODELS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    node: str
    budget_bytes: int
    used_bytes: int
    models_loaded: int
    memory_limit_bytes: int
    memory_available_bytes: int
    cpu_limit_cores: float
    processes: _containers.RepeatedCompositeFieldContainer[RuntimeProcessStatus]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuStatus]
    top_models: _containers.RepeatedCompositeFieldContainer[ModelSize]
    runtimes: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., budget_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., models_loaded: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., cpu_limit_cores: _Optional[float] = ..., processes: _Optional[_Iterable[_Union[RuntimeProcessStatus, _Mapping]]] = ..., gpus: _Optional[_Iterable[_Union[GpuStatus, _Mapping]]] = ..., top_models: _Optional[_Iterable[_Union[ModelSize, _Mapping]]] = ..., runtimes: _Optional[_Mapping[str, str]] = ...) -> None: ...
