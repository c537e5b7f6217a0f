from driftline.kit import topics


def test_every_topic_name_follows_domain_event_version_convention():
    import re

    pattern = re.compile(r"^[a-z]+\.[a-z-]+\.v\d+$")
    for topic in topics.ALL_TOPICS:
        assert pattern.match(topic.name), topic.name


def test_topic_names_are_unique():
    names = [t.name for t in topics.ALL_TOPICS]
    assert len(names) == len(set(names))


def test_every_dead_letter_topic_is_declared():
    declared = {t.name for t in topics.ALL_TOPICS}
    for topic in topics.ALL_TOPICS:
        if topic.dead_letter is not None:
            assert topic.dead_letter.name in declared


def test_namespaced_copy_renames_topic_and_its_dead_letter_topic():
    copy = topics.TRANSACTIONS_RAW.namespaced("t1.")
    assert copy.name == "t1.transactions.raw.v1"
    assert copy.dead_letter_topic().name == "t1.transactions.raw-dlq.v1"
    assert topics.TRANSACTIONS_RAW.name == "transactions.raw.v1"


def test_topic_without_dead_letter_topic_says_so():
    import pytest

    with pytest.raises(LookupError):
        topics.PREDICTIONS.dead_letter_topic()


def test_compacted_topic_config_uses_compaction():
    topic = topics.Topic(name="a.b.v1", key="k", message=None, compacted=True)
    assert topic.broker_config()["cleanup.policy"] == "compact"


def test_by_name_rejects_undeclared_topic():
    import pytest

    with pytest.raises(LookupError):
        topics.by_name("nope.nope.v1")
