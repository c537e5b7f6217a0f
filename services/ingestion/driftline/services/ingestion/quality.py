"""Per-field data quality over a sliding count of events: null, invalid and out-of-range rates."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from driftline.services.ingestion.contract import (
    INVALID_REASONS,
    NULL_REASONS,
    OUT_OF_RANGE_REASONS,
    Violation,
)


@dataclass(frozen=True)
class FieldQuality:
    null_rate: float
    invalid_rate: float
    out_of_range_rate: float


class _Block:
    __slots__ = ("events", "invalid", "null", "out_of_range")

    def __init__(self, fields: Sequence[str]) -> None:
        self.events = 0
        self.null = dict.fromkeys(fields, 0)
        self.invalid = dict.fromkeys(fields, 0)
        self.out_of_range = dict.fromkeys(fields, 0)


class QualityWindow:
    """Rates over roughly the last ``window`` decoded events (those that reached the field rules).

    The window slides in blocks of ``window // blocks`` events, so recording costs O(1) per event
    and a rate covers between ``window - block`` and ``window`` events once warmed up.
    """

    def __init__(self, fields: Sequence[str], window: int = 10_000, blocks: int = 10) -> None:
        if window < 1 or blocks < 1:
            raise ValueError("window and blocks must be positive")
        self.fields = list(fields)
        self._block_size = max(1, window // blocks)
        self._closed: deque[_Block] = deque(maxlen=max(1, blocks - 1))
        self._current = _Block(self.fields)

    def observe(self, violations: Iterable[Violation]) -> None:
        block = self._current
        block.events += 1
        for v in violations:
            if v.field is None or v.field not in block.null:
                continue
            if v.reason in NULL_REASONS:
                block.null[v.field] += 1
            elif v.reason in INVALID_REASONS:
                block.invalid[v.field] += 1
            elif v.reason in OUT_OF_RANGE_REASONS:
                block.out_of_range[v.field] += 1
        if block.events >= self._block_size:
            self._closed.append(block)
            self._current = _Block(self.fields)

    def observe_valid(self, count: int) -> None:
        """Record ``count`` events that broke no rule (what ``observe(())`` does, ``count`` times)."""
        while count > 0:
            block = self._current
            taken = min(count, self._block_size - block.events)
            block.events += taken
            count -= taken
            if block.events >= self._block_size:
                self._closed.append(block)
                self._current = _Block(self.fields)

    @property
    def events(self) -> int:
        """How many events the rates cover."""
        return self._current.events + sum(b.events for b in self._closed)

    def snapshot(self) -> dict[str, FieldQuality]:
        blocks = [*self._closed, self._current]
        total = sum(b.events for b in blocks)
        if total == 0:
            return {f: FieldQuality(0.0, 0.0, 0.0) for f in self.fields}
        return {
            f: FieldQuality(
                null_rate=sum(b.null[f] for b in blocks) / total,
                invalid_rate=sum(b.invalid[f] for b in blocks) / total,
                out_of_range_rate=sum(b.out_of_range[f] for b in blocks) / total,
            )
            for f in self.fields
        }
