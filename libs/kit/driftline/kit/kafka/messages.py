"""What flows through the platform's Kafka clients: headers, outputs, verdicts, handlers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar, cast

from confluent_kafka import Message
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from driftline.kit.codec import decode

M = TypeVar("M", bound=ProtoMessage)

Headers = list[tuple[str, bytes]]

# Header names on dead-letter records (the same names Kafka Connect users look for, namespaced).
DLQ_REASON = "dlq.reason"
DLQ_DETAIL = "dlq.detail"
DLQ_SOURCE_TOPIC = "dlq.source.topic"
DLQ_SOURCE_PARTITION = "dlq.source.partition"
DLQ_SOURCE_OFFSET = "dlq.source.offset"
DLQ_SOURCE_TIMESTAMP = "dlq.source.timestamp"
DLQ_SERVICE = "dlq.service"
CONTENT_TYPE = "content-type"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Output(NamedTuple):
    """One message a handler wants sent (a tuple: handlers build one per event)."""

    topic: str
    value: bytes
    key: bytes | str | None = None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class DeadLetter:
    """A handler's verdict that a message is poison: it goes to the dead-letter topic."""

    reason: str
    detail: str = ""


Outcome = Sequence[Output] | DeadLetter


class PoisonMessage(Exception):
    """Raised by a per-message handler for input that will never succeed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BatchHandler(Protocol):
    """Turns a batch of consumed messages into one outcome per message, in order.

    A handler may also have ``prepare(messages)``: the loop then calls it with the next batch
    when that batch is already consumed, once the current batch is handled and before its
    outputs are produced, and calls the handler with that batch afterwards (or drops it
    unprepared, to consume it again, when the current batch is held back or a failing one is
    handed back in part). ``prepare`` starts what the handler waits for (requests to
    another server), so that it runs while the loop produces; it must have no effect a fresh
    call would not repeat, since the handler may instead be called on the batch, or on a part
    of it, without it. What it raises is ignored: the handler meets it again.
    """

    def __call__(self, messages: Sequence[Message]) -> Sequence[Outcome]: ...


def per_message(handler: Callable[[Message], Iterable[Output]]) -> BatchHandler:
    """Adapt a one-message handler; ``PoisonMessage`` becomes a ``DeadLetter`` outcome."""

    def handle(messages: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in messages:
            try:
                outcomes.append(list(handler(message)))
            except PoisonMessage as err:
                outcomes.append(DeadLetter(err.reason, err.detail))
        return outcomes

    return handle


def header(message: Message, name: str) -> bytes | None:
    """The last value of a header, or None."""
    found = None
    for key, value in cast(Headers, message.headers() or []):
        if key == name:
            found = value
    return found


def decode_value(message_type: type[M], message: Message) -> M:
    """A message's value as ``message_type``: protobuf, or its JSON form when the message's
    ``content-type`` header says ``application/json`` (producers outside Driftline often write
    JSON). Raises ValueError with the reason when it is neither."""
    payload = message.value() or b""
    if header(message, CONTENT_TYPE) == JSON.encode():
        try:
            return json_format.Parse(payload, message_type())
        except json_format.ParseError as err:
            raise ValueError(f"not a valid {message_type.DESCRIPTOR.full_name} in JSON: {err}") from err
    return decode(message_type, payload)
