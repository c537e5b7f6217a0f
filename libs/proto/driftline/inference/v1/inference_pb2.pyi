import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from driftline.features.v1 import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_VIEW_UNSPECIFIED: _ClassVar[PredictionView]
    PREDICTION_VIEW_BASIC: _ClassVar[PredictionView]
    PREDICTION_VIEW_FULL: _ClassVar[PredictionView]
PREDICTION_VIEW_UNSPECIFIED: PredictionView
PREDICTION_VIEW_BASIC: PredictionView
PREDICTION_VIEW_FULL: PredictionView

class PredictRequest(_message.Message):
    __slots__ = ("entity_id", "event_id", "model_name", "view")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    event_id: str
    model_name: str
    view: PredictionView
    def __init__(self, entity_id: _Optional[str] = ..., event_id: _Optional[str] = ..., model_name: _Optional[str] = ..., view: _Optional[_Union[PredictionView, str]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("prediction_id", "entity_id", "score", "label", "model_name", "model_version", "max_feature_age_seconds", "features", "served_by")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURE_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    entity_id: str
    score: float
    label: int
    model_name: str
    model_version: int
    max_feature_age_seconds: float
    features: _containers.RepeatedCompositeFieldContainer[_features_pb2.FeatureValue]
    served_by: str
    def __init__(self, prediction_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., max_feature_age_seconds: _Optional[float] = ..., features: _Optional[_Iterable[_Union[_features_pb2.FeatureValue, _Mapping]]] = ..., served_by: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("requests", "view")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    view: PredictionView
    def __init__(self, requests: _Optional[_Iterable[_Union[PredictRequest, _Mapping]]] = ..., view: _Optional[_Union[PredictionView, str]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class PredictionLog(_message.Message):
    __slots__ = ("prediction_id", "entity_id", "event_id", "model_name", "model_version", "score", "label", "feature_names", "feature_values", "predicted_at", "role")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VALUES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    entity_id: str
    event_id: str
    model_name: str
    model_version: int
    score: float
    label: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    feature_values: _containers.RepeatedScalarFieldContainer[float]
    predicted_at: _timestamp_pb2.Timestamp
    role: str
    def __init__(self, prediction_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., event_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., score: _Optional[float] = ..., label: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., feature_values: _Optional[_Iterable[float]] = ..., predicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., role: _Optional[str] = ...) -> None: ...
