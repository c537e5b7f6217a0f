"""Which of redis-py's errors the consumers treat as an outage (``REDIS_OUTAGE``)."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from driftline.kit.outages import OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "LOADING Redis is loading the dataset in memory",
        "NOPERM User driftline has no permissions to run the 'set' command",
        "WRONGPASS invalid username-password pair or user is disabled.",
    ],
)
def test_a_server_that_cannot_serve_right_now_is_an_outage(reply):
    assert OutagePolicy(errors=REDIS_OUTAGE).is_outage(BaseParser.parse_error(reply))


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR syntax error",
        "ERR wrong number of arguments for 'hset' command",
        "NOSCRIPT No matching script. Please use EVAL.",
        "EXECABORT Transaction discarded because of previous errors.",
    ],
)
def test_a_reply_that_depends_on_the_command_or_its_data_is_not_an_outage(reply):
    assert not OutagePolicy(errors=REDIS_OUTAGE).is_outage(BaseParser.parse_error(reply))
