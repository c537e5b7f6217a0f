import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackLabel(_message.Message):
    __slots__ = ("feedback_id", "prediction_id", "entity_id", "event_id", "label", "label_time", "event_time")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    prediction_id: str
    entity_id: str
    event_id: str
    label: int
    label_time: _timestamp_pb2.Timestamp
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, feedback_id: _Optional[str] = ..., prediction_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., event_id: _Optional[str] = ..., label: _Optional[int] = ..., label_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
