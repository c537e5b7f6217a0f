from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_CHAMPION: _ClassVar[Role]
    ROLE_CHALLENGER: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_CHAMPION: Role
ROLE_CHALLENGER: Role

class ModelSpec(_message.Message):
    __slots__ = ("path", "sha256", "name", "version", "input", "input_dtype", "score_output", "feature_names", "columns", "threshold", "intra_threads", "device", "cuda_device_id", "io_binding")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCORE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INTRA_THREADS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CUDA_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    IO_BINDING_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    name: str
    version: int
    input: str
    input_dtype: str
    score_output: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    columns: _containers.RepeatedScalarFieldContainer[int]
    threshold: float
    intra_threads: int
    device: str
    cuda_device_id: int
    io_binding: bool
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., input: _Optional[str] = ..., input_dtype: _Optional[str] = ..., score_output: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., columns: _Optional[_Iterable[int]] = ..., threshold: _Optional[float] = ..., intra_threads: _Optional[int] = ..., device: _Optional[str] = ..., cuda_device_id: _Optional[int] = ..., io_binding: _Optional[bool] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "role")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    role: Role
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("load_seconds", "replaced_version", "provider", "io_binding")
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    IO_BINDING_FIELD_NUMBER: _ClassVar[int]
    load_seconds: float
    replaced_version: int
    provider: str
    io_binding: bool
    def __init__(self, load_seconds: _Optional[float] = ..., replaced_version: _Optional[int] = ..., provider: _Optional[str] = ..., io_binding: _Optional[bool] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    def __init__(self, role: _Optional[_Union[Role, str]] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("removed_version",)
    REMOVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    removed_version: int
    def __init__(self, removed_version: _Optional[int] = ...) -> None: ...
