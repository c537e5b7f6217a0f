import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriftStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_STATUS_UNSPECIFIED: _ClassVar[DriftStatus]
    DRIFT_STATUS_NO_DRIFT: _ClassVar[DriftStatus]
    DRIFT_STATUS_DRIFT: _ClassVar[DriftStatus]
    DRIFT_STATUS_INSUFFICIENT_DATA: _ClassVar[DriftStatus]
DRIFT_STATUS_UNSPECIFIED: DriftStatus
DRIFT_STATUS_NO_DRIFT: DriftStatus
DRIFT_STATUS_DRIFT: DriftStatus
DRIFT_STATUS_INSUFFICIENT_DATA: DriftStatus

class FeatureDriftStat(_message.Message):
    __slots__ = ("feature", "statistic", "p_value", "threshold", "drifted", "test")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    feature: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    test: str
    def __init__(self, feature: _Optional[str] = ..., statistic: _Optional[float] = ..., p_value: _Optional[float] = ..., threshold: _Optional[float] = ..., drifted: _Optional[bool] = ..., test: _Optional[str] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("report_id", "model_name", "model_version", "detector", "stream", "status", "window_size", "window_start", "window_end", "features", "detected_at", "events_seen", "reason")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_SEEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    model_name: str
    model_version: int
    detector: str
    stream: str
    status: DriftStatus
    window_size: int
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    features: _containers.RepeatedCompositeFieldContainer[FeatureDriftStat]
    detected_at: _timestamp_pb2.Timestamp
    events_seen: int
    reason: str
    def __init__(self, report_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., detector: _Optional[str] = ..., stream: _Optional[str] = ..., status: _Optional[_Union[DriftStatus, str]] = ..., window_size: _Optional[int] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Iterable[_Union[FeatureDriftStat, _Mapping]]] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events_seen: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PerformanceDegradation(_message.Message):
    __slots__ = ("event_id", "model_name", "model_version", "metric", "value", "threshold", "labelled_count", "detected_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LABELLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    model_name: str
    model_version: int
    metric: str
    value: float
    threshold: float
    labelled_count: int
    detected_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., labelled_count: _Optional[int] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
