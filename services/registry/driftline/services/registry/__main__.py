"""``python -m driftline.services.registry``: run the registry service."""

import asyncio

from driftline.kit.logging import configure_logging
from driftline.services.registry.app import RegistryApp
from driftline.services.registry.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log, service="registry")
    asyncio.run(RegistryApp(settings).serve())


if __name__ == "__main__":
    main()
