"""``python -m driftline.services.drift``: run the drift service."""

from driftline.kit.logging import configure_logging
from driftline.services.drift.app import run
from driftline.services.drift.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log, service="drift")
    run(settings)


if __name__ == "__main__":
    main()
