"""``python -m driftline.services.inference``: run the inference service."""

import asyncio

from driftline.kit import entrypoint
from driftline.services.inference import app
from driftline.services.inference.config import Settings


def main() -> None:
    entrypoint.main("inference", Settings, lambda settings: asyncio.run(app.serve(settings)))


if __name__ == "__main__":
    main()
