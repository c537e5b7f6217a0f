"""``python -m driftline.services.features``: run the features service."""

from driftline.kit import entrypoint
from driftline.services.features.app import FeaturesApp
from driftline.services.features.config import Settings


def main() -> None:
    entrypoint.main("features", Settings, lambda settings: FeaturesApp(settings).run())


if __name__ == "__main__":
    main()
