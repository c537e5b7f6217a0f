"""``driftline topics``: create and list the declared topics."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import ALL_TOPICS, TopicMismatch, ensure_topics


@click.group()
def topics() -> None:
    """The Kafka topics Driftline declares."""


@topics.command("create")
def create() -> None:
    """Create every declared topic that does not exist yet (safe to repeat)."""
    settings = KafkaSettings()
    try:
        created = ensure_topics(settings)
    except TopicMismatch as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"topics: {len(created)} created, {len(ALL_TOPICS) - len(created)} already present")


@topics.command("list")
def list_() -> None:
    """Print the declared topics."""
    table = Table("name", "key", "value", "partitions", "policy", "dead letters")
    for t in ALL_TOPICS:
        table.add_row(
            t.name,
            t.key,
            t.message.DESCRIPTOR.full_name if t.message else "bytes",
            str(t.partitions),
            "compact" if t.compacted else f"delete after {t.retention_ms // 86_400_000}d",
            t.dead_letter.name if t.dead_letter else "",
        )
    Console().print(table)
