from __future__ import annotations

from driftline.services.ingestion.dedup import Claim, MemoryDeduplicator, claim, source_token


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_copy_of_an_event_wins_and_later_copies_are_duplicates() -> None:
    dedup = MemoryDeduplicator(ttl_s=60)
    assert claim(dedup, [Claim("ev-1", "raw/0/1")]) == [True]
    assert claim(dedup, [Claim("ev-1", "raw/1/7"), Claim("ev-2", "raw/1/8")]) == [False, True]


def test_a_replay_of_the_same_message_is_not_a_duplicate_of_itself() -> None:
    dedup = MemoryDeduplicator(ttl_s=60)
    token = source_token("raw", 2, 41)
    assert token == "raw/2/41"
    assert claim(dedup, [Claim("ev-1", token)]) == [True]
    # The process died before committing: the same message comes back.
    assert claim(dedup, [Claim("ev-1", token)]) == [True]


def test_two_copies_in_one_batch_keep_only_the_first() -> None:
    dedup = MemoryDeduplicator(ttl_s=60)
    assert claim(dedup, [Claim("ev-1", "raw/0/1"), Claim("ev-1", "raw/0/2")]) == [True, False]


def test_an_event_id_is_forgotten_after_the_horizon() -> None:
    clock = Clock()
    dedup = MemoryDeduplicator(ttl_s=10, clock=clock)
    assert claim(dedup, [Claim("ev-1", "raw/0/1")]) == [True]
    clock.now = 9.9
    assert claim(dedup, [Claim("ev-1", "raw/0/2")]) == [False]
    clock.now = 10.0
    assert claim(dedup, [Claim("ev-1", "raw/0/2")]) == [True]
