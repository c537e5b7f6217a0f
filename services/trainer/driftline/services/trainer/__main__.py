"""``python -m driftline.services.trainer``: run the trigger and label consumers and the retrain worker."""

from driftline.kit.logging import configure_logging
from driftline.services.trainer.app import TrainerApp
from driftline.services.trainer.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log, service="trainer")
    TrainerApp(settings).run()


if __name__ == "__main__":
    main()
