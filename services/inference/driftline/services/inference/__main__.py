"""Run the inference service: ``python -m driftline.services.inference``."""

from __future__ import annotations

import asyncio

from driftline.kit.logging import configure_logging
from driftline.services.inference import app
from driftline.services.inference.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log, service="inference")
    asyncio.run(app.serve(settings))


if __name__ == "__main__":
    main()
