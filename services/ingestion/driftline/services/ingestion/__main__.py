"""``python -m driftline.services.ingestion``: run the ingestion service."""

from driftline.kit.logging import configure_logging
from driftline.services.ingestion.app import SERVICE, serve
from driftline.services.ingestion.config import Settings

settings = Settings()
configure_logging(settings.log, service=SERVICE)
serve(settings)
