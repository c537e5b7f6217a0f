from driftline.kit.logging import configure_logging
from driftline.services.demo.app import serve
from driftline.services.demo.config import Settings

settings = Settings()
configure_logging(settings.log, service="demo")
raise SystemExit(serve(settings))
