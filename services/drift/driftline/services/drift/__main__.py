"""``python -m driftline.services.drift``: run the drift service."""

from driftline.kit import entrypoint
from driftline.services.drift.app import run
from driftline.services.drift.config import Settings


def main() -> None:
    entrypoint.main("drift", Settings, run)


if __name__ == "__main__":
    main()
