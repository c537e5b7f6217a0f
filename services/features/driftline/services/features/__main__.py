"""Run the features service: ``python -m driftline.services.features``."""

from __future__ import annotations

from driftline.kit.logging import configure_logging
from driftline.services.features.app import FeaturesApp
from driftline.services.features.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log, service="features")
    FeaturesApp(settings).run()


if __name__ == "__main__":
    main()
