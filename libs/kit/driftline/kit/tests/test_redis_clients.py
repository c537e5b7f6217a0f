"""Which of redis-py's errors the consumers treat as an outage (``REDIS_OUTAGE``)."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from driftline.kit.outages import OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE
from driftline.kit.testing import REDIS_CANNOT_SERVE_REPLIES


@pytest.mark.parametrize(
    "reply",
    [*REDIS_CANNOT_SERVE_REPLIES, "WRONGPASS invalid username-password pair or user is disabled."],
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
