"""``driftline settings``: every service's settings, as the Markdown of docs/settings.md."""

from __future__ import annotations

from importlib.metadata import entry_points

import click
from pydantic import BaseSettings

from driftline.kit.settings_reference import reference

# Each service declares its Settings class under this group in its own pyproject.
GROUP = "driftline.settings"


def declared() -> dict[str, type[BaseSettings]]:
    """The services' settings classes, by service name."""
    found = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a settings class")
        found[ep.name] = cls
    return found


@click.command("settings")
@click.argument("services", nargs=-1)
def settings(services: tuple[str, ...]) -> None:
    """Print the settings reference (Markdown) of SERVICES, or of every service."""
    known = declared()
    unknown = sorted(set(services) - set(known))
    if unknown:
        raise click.BadParameter(f"no such service: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    chosen = {name: cls for name, cls in known.items() if not services or name in services}
    click.echo(reference(chosen), nl=False)
