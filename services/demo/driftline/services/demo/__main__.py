from driftline.kit.logging import configure_logging
from driftline.kit.settings import LogSettings
from driftline.services.demo.app import serve
from driftline.services.demo.config import Settings

settings = Settings()
configure_logging(LogSettings(format="console", level=settings.log_level), service="demo")
raise SystemExit(serve(settings))
