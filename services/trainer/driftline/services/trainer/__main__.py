"""``python -m driftline.services.trainer``: run the trigger and label consumers and the retrain worker."""

from driftline.kit import entrypoint
from driftline.services.trainer.app import TrainerApp
from driftline.services.trainer.config import Settings


def main() -> None:
    entrypoint.main("trainer", Settings, lambda settings: TrainerApp(settings).run())


if __name__ == "__main__":
    main()
