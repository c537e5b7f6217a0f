"""``driftline``: one command whose subcommands come from the ``driftline.commands`` entry points.

Each package that owns a capability (ingestion: ``produce``; registry: ``models``, ``runs``;
trainer: ``train``) declares its click command in its own pyproject, so this module never
imports a service directly and a new subcommand needs no edit here.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from driftline.kit.logging import configure_logging
from driftline.kit.settings import LogSettings


class _EntryPointGroup(click.Group):
    def _commands(self) -> dict[str, click.Command]:
        found = {}
        for ep in entry_points(group="driftline.commands"):
            found[ep.name] = ep
        return found  # type: ignore[return-value]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._commands())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ep = self._commands().get(cmd_name)
        if ep is None:
            return None
        command = ep.load()  # type: ignore[attr-defined]
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_EntryPointGroup)
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console", show_default=True)
def cli(log_format: str) -> None:
    """Driftline: events to features, predictions, drift and retraining, as one loop."""
    configure_logging(LogSettings(format=log_format), service="cli")


def main() -> None:
    cli(prog_name="driftline")
