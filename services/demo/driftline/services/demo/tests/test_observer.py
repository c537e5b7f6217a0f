from driftline.kit.settings import KafkaSettings
from driftline.registry.v1 import registry_pb2
from driftline.services.demo.observer import Observer, Stats

CAUGHT, MISSED, CLEAN = (1, 1), (0, 1), (0, 0)


def _stats(champion: int, promoted: list[int], pairs: dict[int, list[tuple[int, int]]]) -> Stats:
    stats = Stats()
    stats.champion_version = champion
    stats.timeline.promoted_after_onset = promoted
    stats.version_pairs = pairs
    return stats


def test_a_champion_that_catches_the_frauds_ends_the_demo():
    stats = _stats(4, [4], {4: [CAUGHT] * 7 + [MISSED] * 3 + [CLEAN] * 90})
    assert stats.recovered(labels=100, recall=0.6)
    assert not stats.recovered(labels=100, recall=0.8)


def test_a_champion_that_misses_them_waits_for_the_next_retrain():
    stats = _stats(4, [4], {4: [MISSED] * 10 + [CLEAN] * 90})
    assert not stats.recovered(labels=100, recall=0.6)
    assert stats.recovered(labels=100, recall=0.0)  # 0: the first new champion is enough

    stats.timeline.promoted_after_onset.append(6)
    stats.champion_version = 6
    stats.version_pairs[6] = [CAUGHT] * 9 + [MISSED] + [CLEAN] * 90
    assert stats.recovered(labels=100, recall=0.6)


def test_a_champion_that_catches_them_by_flagging_too_much_has_not_recovered():
    flagged = (1, 0)  # a legitimate transaction called fraud
    stats = _stats(4, [4], {4: [CAUGHT] * 9 + [MISSED] + [flagged] * 20 + [CLEAN] * 70})
    assert stats.version_scores(4, last=100).precision == 9 / 29
    assert not stats.recovered(labels=100, recall=0.6, precision=0.5)
    assert stats.recovered(labels=100, recall=0.6)  # precision not asked

    stats.timeline.promoted_after_onset.append(5)
    stats.champion_version = 5
    stats.version_pairs[5] = [CAUGHT] * 9 + [MISSED] + [flagged] * 3 + [CLEAN] * 87
    assert stats.recovered(labels=100, recall=0.6, precision=0.5)


def test_only_the_last_labels_of_a_version_count():
    # Early misses (labels of the transition) age out of the window.
    stats = _stats(4, [4], {4: [MISSED] * 50 + [CAUGHT] * 10 + [CLEAN] * 90})
    assert stats.recovered(labels=100, recall=0.6)
    assert stats.version_scores(4, last=100).recall == 1.0


def test_nothing_counts_before_enough_labels_or_without_a_promotion_after_the_drift():
    assert not _stats(4, [4], {4: [CAUGHT] * 99}).recovered(labels=100, recall=0.0)
    assert not _stats(1, [], {1: [CAUGHT] * 200}).recovered(labels=100, recall=0.0)
    # The champion was rolled back to a version older than the last promotion.
    assert not _stats(1, [4], {1: [CAUGHT] * 200}).recovered(labels=100, recall=0.0)


def _champion_event(version: int) -> registry_pb2.ModelEvent:
    return registry_pb2.ModelEvent(
        model_name="fraud", type=registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET, alias="champion", version=version
    )


def test_a_new_champion_that_served_before_its_event_was_read_counts_from_its_first_prediction():
    stats = Stats()
    stats.champion_version = 1
    stats.timeline.drift_onset = 100.0
    stats.timeline.first_served = {1: 10.0, 4: 150.0}  # inference swapped before the watcher read the event
    observer = Observer(KafkaSettings(), "127.0.0.1:1", "fraud", stats)
    observer._on_model_event(_champion_event(4))
    assert stats.timeline.new_champion_version == 4
    assert stats.timeline.first_served_by_new_champion == 150.0

    later = Stats()
    later.champion_version = 1
    later.timeline.drift_onset = 100.0
    Observer(KafkaSettings(), "127.0.0.1:1", "fraud", later)._on_model_event(_champion_event(4))
    assert later.timeline.first_served_by_new_champion is None  # the scorer sets it when v4 serves
