"""Where the librdkafka log lines of every client of the platform go."""

from __future__ import annotations

import logging

#: Where every client's librdkafka log lines go (the ``logger`` client setting): through the
#: standard library, so ``configure_logging`` renders them as JSON like the rest, rather than
#: librdkafka printing its own ``%3|...|FAIL|`` lines to stderr.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
