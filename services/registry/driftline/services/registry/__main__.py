"""``python -m driftline.services.registry``: run the registry service."""

import asyncio

from driftline.kit import entrypoint
from driftline.services.registry.app import RegistryApp
from driftline.services.registry.config import Settings


def main() -> None:
    entrypoint.main("registry", Settings, lambda settings: asyncio.run(RegistryApp(settings).serve()))


if __name__ == "__main__":
    main()
