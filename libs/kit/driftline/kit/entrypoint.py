"""What every service's ``__main__`` runs: ``python -m driftline.services.<name> [--help | --settings]``.

Services take their configuration from the environment only (``settings.py``), so the command line
has two jobs left, both answered from the service's ``Settings`` class, the one source of truth:

- ``--help`` lists every environment variable the service reads, with its default and description;
- ``--settings`` validates the environment and prints the configuration it gives, secrets masked,
  as ``NAME=value`` lines, then exits: a configuration check before a deployment.

Invalid settings stop the service with one line per variable at fault and exit status 2, not a
traceback; so does an argument the service does not know.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseSettings, ValidationError
from pydantic.env_settings import SettingsError

from driftline.kit.logging import configure_logging
from driftline.kit.settings import LogSettings
from driftline.kit.settings_reference import describe, effective, problems

S = TypeVar("S", bound=BaseSettings)

USAGE_ERROR = 2


def load(settings_cls: type[S], service: str) -> S:
    """``settings_cls`` built from the environment; exits with status 2 when it is invalid."""
    try:
        return settings_cls()
    except (ValidationError, SettingsError) as err:
        print(f"{service}: invalid settings", file=sys.stderr)
        for line in problems(settings_cls) or [str(err)]:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def main(
    service: str,
    settings_cls: type[S],
    run: Callable[[S], int | None],
    *,
    log_settings: Callable[[S], LogSettings] | None = None,
    description: str = "",
    argv: Sequence[str] | None = None,
) -> None:
    """Parse the command line, build the settings, configure logging and run the service; exits
    with what ``run`` returns (0 for None). ``log_settings`` picks the logging settings (default:
    the ``log`` field)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m driftline.services.{service}",
        description=description or f"Run the {service} service. It reads its settings from the environment.",
        epilog=describe(settings_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--settings",
        action="store_true",
        help="validate the environment, print the settings it gives (secrets masked) and exit",
    )
    args = parser.parse_args(argv)
    settings = load(settings_cls, service)
    if args.settings:
        print("\n".join(effective(settings)))
        return
    configure_logging(log_settings(settings) if log_settings else settings.log, service=service)  # type: ignore[attr-defined]
    raise SystemExit(run(settings))
