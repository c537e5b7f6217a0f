import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawTransaction(_message.Message):
    __slots__ = ("event_id", "card_id", "merchant_id", "amount", "currency", "merchant_category", "country", "channel", "event_time", "contract_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    merchant_category: str
    country: str
    channel: str
    event_time: str
    contract_version: str
    def __init__(self, event_id: _Optional[str] = ..., card_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., merchant_category: _Optional[str] = ..., country: _Optional[str] = ..., channel: _Optional[str] = ..., event_time: _Optional[str] = ..., contract_version: _Optional[str] = ...) -> None: ...

class CleanTransaction(_message.Message):
    __slots__ = ("event_id", "card_id", "merchant_id", "amount", "currency", "merchant_category", "country", "channel", "event_time", "ingested_at", "contract_version", "source_topic", "source_partition", "source_offset")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    merchant_category: str
    country: str
    channel: str
    event_time: _timestamp_pb2.Timestamp
    ingested_at: _timestamp_pb2.Timestamp
    contract_version: str
    source_topic: str
    source_partition: int
    source_offset: int
    def __init__(self, event_id: _Optional[str] = ..., card_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., merchant_category: _Optional[str] = ..., country: _Optional[str] = ..., channel: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., contract_version: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ...) -> None: ...
