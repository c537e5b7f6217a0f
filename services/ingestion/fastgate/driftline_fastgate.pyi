"""Ingestion's native batch fast path (Rust): see docs/adr/0006-native-ingestion-fast-path.md."""

from collections.abc import Iterable, Sequence
from typing import Any

class BatchGate:
    """Canonical JSON transactions checked against compiled contract rules, clean events written."""

    def __init__(
        self,
        fields: Sequence[dict[str, Any]],
        *,
        id_field: str,
        key_field: str,
        max_payload_bytes: int,
        lineage: tuple[int, int, int, int],
        content_type_header: str,
        json_media_type: bytes,
    ) -> None: ...
    def examine(
        self, messages: Iterable[Any], now_us: int, ingested_at: tuple[int, int]
    ) -> tuple[list[tuple[bytes, bytes] | None], list[bytes | None], list[bytes | None], list[int]]:
        """Per message, (clean event, key), event id and source when accepted, else None
        three times; and the indices of the declined messages."""

def resp_set_commands(prefix: bytes, keys: list[bytes], values: list[bytes], options: list[bytes]) -> bytes:
    """``SET <prefix><key> <value> <options...>`` per key, as one RESP buffer."""
