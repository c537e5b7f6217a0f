"""``python -m driftline.services.demo``: run the whole loop on the local stack (``make demo``)."""

from driftline.kit import entrypoint
from driftline.kit.settings import LogSettings
from driftline.services.demo.app import serve
from driftline.services.demo.config import Settings


def main() -> None:
    entrypoint.main(
        "demo",
        Settings,
        serve,
        # The terminal belongs to the live view: the demo's own log lines are few and readable.
        log_settings=lambda s: LogSettings(format="console", level=s.log_level),
        description="Run the whole loop end to end on the local stack, with a live view and a report.",
    )


if __name__ == "__main__":
    main()
