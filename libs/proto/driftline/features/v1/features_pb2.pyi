import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_OK: _ClassVar[FeatureStatus]
    FEATURE_STATUS_STALE: _ClassVar[FeatureStatus]
    FEATURE_STATUS_MISSING: _ClassVar[FeatureStatus]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_OK: FeatureStatus
FEATURE_STATUS_STALE: FeatureStatus
FEATURE_STATUS_MISSING: FeatureStatus

class FeatureValue(_message.Message):
    __slots__ = ("name", "value", "event_time", "status", "age_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    event_time: _timestamp_pb2.Timestamp
    status: FeatureStatus
    age_seconds: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[FeatureStatus, str]] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("entity_id", "feature_set", "feature_set_version", "values", "event_time", "event_id")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    feature_set: str
    feature_set_version: int
    values: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    event_time: _timestamp_pb2.Timestamp
    event_id: str
    def __init__(self, entity_id: _Optional[str] = ..., feature_set: _Optional[str] = ..., feature_set_version: _Optional[int] = ..., values: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ...) -> None: ...
