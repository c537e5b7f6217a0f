"""``python -m driftline.services.ingestion``: run the ingestion service."""

from driftline.kit import entrypoint
from driftline.services.ingestion.app import SERVICE, serve
from driftline.services.ingestion.config import Settings


def main() -> None:
    entrypoint.main(SERVICE, Settings, serve)


if __name__ == "__main__":
    main()
