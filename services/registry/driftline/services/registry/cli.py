"""``driftline models …`` and ``driftline runs …``: the registry from a terminal.

Both groups talk to a running registry through ``driftline.kit.registry_client``; the address
and token come from DRIFTLINE_REGISTRY_ADDRESS and DRIFTLINE_REGISTRY_TOKEN (or --address/--token).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from driftline.kit.errors import DriftlineError, FailedPrecondition, NotFound
from driftline.kit.registry_client import RegistryClient, RegistryClientSettings, idle_versions
from driftline.registry.v1 import registry_pb2 as pb

T = TypeVar("T")


def _console() -> Console:
    return Console(width=160)


def _client(ctx: click.Context) -> RegistryClient:
    settings = RegistryClientSettings()
    address = ctx.obj.get("address") or settings.address
    token = ctx.obj.get("token") or (settings.token.get_secret_value() if settings.token else None)
    return RegistryClient(
        address, token, settings.max_message_bytes, timeout_s=settings.timeout_s, actor="cli", tls=settings
    )


def _run(ctx: click.Context, action: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _client(ctx) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except DriftlineError as err:
        raise click.ClickException(f"{err.status.name}: {err}") from err


def _when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{what} must look like key=value, got {item!r}")
        found[key] = value
    return found


def _metrics_text(metrics: Any) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _connection_options(group: click.Group) -> click.Group:
    group = click.option("--token", default=None, help="Bearer token (default: DRIFTLINE_REGISTRY_TOKEN).")(
        group
    )
    return click.option(
        "--address", default=None, help="Registry host:port (default: DRIFTLINE_REGISTRY_ADDRESS)."
    )(group)


# --- models -------------------------------------------------------------------------------------


@_connection_options
@click.group()
@click.pass_context
def models(ctx: click.Context, address: str | None, token: str | None) -> None:
    """Versioned ONNX models: list, show, register, move aliases, audit."""
    ctx.obj = {"address": address, "token": token}


@models.command("list")
@click.argument("name", required=False, default="")
@click.pass_context
def list_models(ctx: click.Context, name: str) -> None:
    """Versions of NAME, or of every model."""
    found = _run(ctx, lambda c: c.list_versions(name))
    table = Table("model", "version", "aliases", "sha256", "size", "feature set", "metrics", "created", "by")
    for mv in found:
        table.add_row(
            mv.name,
            str(mv.version),
            ", ".join(mv.aliases) or ("archived" if mv.HasField("archived_at") else ""),
            mv.artifact_sha256[:12],
            f"{mv.artifact_size:,}",
            f"{mv.feature_set} v{mv.feature_set_version}" if mv.feature_set else "",
            _metrics_text(mv.metrics),
            _when(mv.created_at),
            mv.created_by,
        )
    _console().print(table)


@models.command("show")
@click.argument("name")
@click.option(
    "--version", "-v", type=int, default=None, help="Version number (default: the newest not archived)."
)
@click.option("--alias", "-a", default=None, help="Alias instead of a version number.")
@click.pass_context
def show(ctx: click.Context, name: str, version: int | None, alias: str | None) -> None:
    """Everything the registry knows about one version."""
    mv = _run(ctx, lambda c: c.get_version(name, version=version, alias=alias, omit_reference=False))
    table = Table("field", "value", show_header=False)
    lineage = mv.lineage
    rows = [
        ("model", f"{mv.name} v{mv.version}"),
        ("aliases", ", ".join(mv.aliases)),
        ("artifact", f"sha256:{mv.artifact_sha256} ({mv.artifact_size:,} bytes)"),
        ("inputs", "; ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in mv.signature.inputs)),
        ("outputs", "; ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in mv.signature.outputs)),
        ("features", ", ".join(mv.signature.feature_names)),
        ("feature set", f"{mv.feature_set} v{mv.feature_set_version}" if mv.feature_set else ""),
        ("metrics", _metrics_text(mv.metrics)),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted(mv.params.items()))),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(mv.tags.items()))),
        ("data", f"{_when(lineage.data_start)} .. {_when(lineage.data_end)} sha256:{lineage.data_hash}"),
        ("code", lineage.code_revision),
        ("parent", str(lineage.parent_version or "")),
        ("trigger", f"{lineage.trigger} {lineage.trigger_id}".strip()),
        ("run", lineage.run_id),
        ("reference", f"{mv.reference.rows} rows" if mv.HasField("reference") else "none"),
        ("created", f"{_when(mv.created_at)} by {mv.created_by}"),
        ("archived", _when(mv.archived_at) if mv.HasField("archived_at") else "no"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    _console().print(table)


@models.command("register")
@click.argument("name")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--feature-set", default="", help="Name of the feature set the model expects.")
@click.option("--feature-set-version", type=int, default=0)
@click.option("--features", default="", help="Comma-separated feature names in input column order.")
@click.option("--metric", "metrics", multiple=True, help="key=value training metric (repeatable).")
@click.option("--param", "params", multiple=True, help="key=value training parameter (repeatable).")
@click.option("--tag", "tags", multiple=True, help="key=value tag (repeatable).")
@click.option("--parent-version", type=int, default=0)
@click.option("--run-id", default="")
@click.option("--code-revision", default="")
@click.option("--data-hash", default="")
@click.option(
    "--trigger", type=click.Choice(["", "initial", "drift", "degradation", "manual"]), default="manual"
)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    artifact: Path,
    feature_set: str,
    feature_set_version: int,
    features: str,
    metrics: tuple[str, ...],
    params: tuple[str, ...],
    tags: tuple[str, ...],
    parent_version: int,
    run_id: str,
    code_revision: str,
    data_hash: str,
    trigger: str,
    reason: str,
) -> None:
    """Register ARTIFACT (an .onnx file) as the next version of NAME."""
    try:
        metric_values = {k: float(v) for k, v in _pairs(metrics, "--metric").items()}
    except ValueError as err:
        raise click.BadParameter(f"--metric values must be numbers: {err}") from err
    request = pb.RegisterModelVersionRequest(
        name=name,
        artifact=artifact.read_bytes(),
        signature=pb.Signature(feature_names=[f.strip() for f in features.split(",") if f.strip()]),
        feature_set=feature_set,
        feature_set_version=feature_set_version,
        metrics=metric_values,
        params=_pairs(params, "--param"),
        tags=_pairs(tags, "--tag"),
        lineage=pb.Lineage(
            parent_version=parent_version,
            run_id=run_id,
            code_revision=code_revision,
            data_hash=data_hash,
            trigger=trigger,
        ),
        reason=reason,
    )
    mv = _run(ctx, lambda c: c.register(request))
    click.echo(f"registered {mv.name} v{mv.version} sha256:{mv.artifact_sha256}")


@models.group("alias")
def alias() -> None:
    """Move, delete and look back at aliases (compare-and-swap)."""


async def _current(client: RegistryClient, name: str, alias_name: str) -> int:
    try:
        return (await client.get_version(name, alias=alias_name)).version
    except NotFound:
        return 0


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version", type=int)
@click.option(
    "--expected",
    type=int,
    default=None,
    help="Version the alias must point at now (0: unset). Default: what it points at when read.",
)
@click.option("--reason", default="")
@click.option("--lock-owner", default="", help="Owner of the deployment lock, when the model is locked.")
@click.pass_context
def alias_set(
    ctx: click.Context,
    name: str,
    alias_name: str,
    version: int,
    expected: int | None,
    reason: str,
    lock_owner: str,
) -> None:
    """Point ALIAS of NAME at VERSION."""

    async def go(client: RegistryClient) -> pb.AliasChange:
        previous = expected if expected is not None else await _current(client, name, alias_name)
        return await client.set_alias(name, alias_name, version, previous, reason, lock_owner=lock_owner)

    change = _run(ctx, go)
    click.echo(
        f"{change.name} {change.alias}: v{change.previous_version or '-'} -> v{change.version} "
        f"(audit #{change.audit_seq})"
    )


@alias.command("delete")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--expected", type=int, default=None, help="Version the alias must point at now.")
@click.option("--reason", default="")
@click.option("--lock-owner", default="")
@click.pass_context
def alias_delete(
    ctx: click.Context, name: str, alias_name: str, expected: int | None, reason: str, lock_owner: str
) -> None:
    """Unset ALIAS of NAME."""

    async def go(client: RegistryClient) -> pb.AliasChange:
        previous = expected if expected is not None else await _current(client, name, alias_name)
        return await client.delete_alias(name, alias_name, previous, reason, lock_owner=lock_owner)

    change = _run(ctx, go)
    click.echo(
        f"{change.name} {change.alias}: v{change.previous_version} -> unset (audit #{change.audit_seq})"
    )


@alias.command("at")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("when", metavar="TIME")
@click.pass_context
def alias_at(ctx: click.Context, name: str, alias_name: str, when: str) -> None:
    """Which version ALIAS pointed at at TIME (ISO 8601; UTC when no offset is given)."""
    try:
        moment = datetime.fromisoformat(when)
    except ValueError as err:
        raise click.BadParameter(f"not an ISO 8601 time: {when!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    version = _run(ctx, lambda c: c.resolve_alias_at(name, alias_name, moment))
    click.echo(f"{name} {alias_name} at {moment.isoformat()}: {f'v{version}' if version else 'unset'}")


@models.command("archive")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", default="")
@click.option("--lock-owner", default="", help="Owner of the deployment lock, when the model is locked.")
@click.pass_context
def archive(ctx: click.Context, name: str, version: int, reason: str, lock_owner: str) -> None:
    """Retire VERSION of NAME (no alias may point at it): it can no longer be aliased or
    fetched, and its artifact is removed once no live version shares it."""
    result = _run(ctx, lambda c: c.archive(name, version, reason, lock_owner=lock_owner))
    click.echo(f"archived {result.name} v{result.version} at {_when(result.archived_at)}")


@models.command("prune")
@click.argument("name")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the newest versions no alias points at stay live.",
)
@click.option("--reason", default="pruned", show_default=True)
@click.option("--lock-owner", default="", help="Owner of the deployment lock, when the model is locked.")
@click.option("--dry-run", is_flag=True, help="Only say which versions would be archived.")
@click.pass_context
def prune(ctx: click.Context, name: str, keep: int, reason: str, lock_owner: str, dry_run: bool) -> None:
    """Archive NAME's versions no alias points at, but the newest KEEP."""

    async def go(client: RegistryClient) -> tuple[list[int], list[str]]:
        candidates = idle_versions(await client.list_versions(name), keep)
        if dry_run:
            return candidates, []
        archived, refused = [], []
        for version in candidates:
            try:
                await client.archive(name, version, reason, lock_owner=lock_owner)
            except FailedPrecondition as err:  # aliased meanwhile: it stays
                refused.append(f"kept v{version}: {err}")
                continue
            archived.append(version)
        return archived, refused

    archived, refused = _run(ctx, go)
    listed = ", ".join(f"v{v}" for v in archived) or "nothing"
    click.echo(f"{'would archive' if dry_run else 'archived'} {name} {listed}")
    for line in refused:
        click.echo(line)


@models.command("lock")
@click.argument("name")
@click.argument("owner")
@click.option("--reason", default="")
@click.pass_context
def lock(ctx: click.Context, name: str, owner: str, reason: str) -> None:
    """Hold the deployment lock of NAME: only OWNER may move its aliases."""
    result = _run(ctx, lambda c: c.lock(name, owner, reason))
    click.echo(f"{result.name} locked by {result.owner}")


@models.command("unlock")
@click.argument("name")
@click.argument("owner")
@click.option("--reason", default="")
@click.option(
    "--force",
    is_flag=True,
    help="Break a lock taken with another token (lock breakers only; needs --reason).",
)
@click.pass_context
def unlock(ctx: click.Context, name: str, owner: str, reason: str, force: bool) -> None:
    """Release the deployment lock OWNER holds on NAME."""
    result = _run(ctx, lambda c: c.unlock(name, owner, reason, force=force))
    click.echo(f"{result.name} unlocked")


@models.command("audit")
@click.argument("name", required=False, default="")
@click.option("--after", type=int, default=0, help="Only records after this sequence number.")
@click.option("--limit", type=int, default=100)
@click.pass_context
def audit(ctx: click.Context, name: str, after: int, limit: int) -> None:
    """The audit log (of NAME, or of everything): who changed what, when and why."""
    records = _run(ctx, lambda c: c.list_audit(name, after_seq=after, limit=limit))
    table = Table("seq", "at", "actor", "action", "model", "before", "after", "reason", "hash")
    for r in records:
        table.add_row(
            str(r.seq),
            _when(r.at),
            r.actor,
            r.action,
            r.model_name,
            _compact(r.before_json),
            _compact(r.after_json),
            r.reason,
            r.hash[:12],
        )
    _console().print(table)


def _compact(document: str) -> str:
    value = json.loads(document) if document else None
    if value is None:
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if k not in {"params_json", "metrics_json"})
    return str(value)


@models.command("verify")
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Recompute the audit hash chain; exit 1 when it is broken."""
    result = _run(ctx, lambda c: c.verify_audit())
    if result.ok:
        click.echo(f"audit chain intact: {result.records} records")
        return
    click.echo(
        f"audit chain BROKEN at record {result.broken_at} ({result.records} verified before it)", err=True
    )
    ctx.exit(1)


# --- runs ---------------------------------------------------------------------------------------


@_connection_options
@click.group()
@click.pass_context
def runs(ctx: click.Context, address: str | None, token: str | None) -> None:
    """Training runs recorded by the trainer."""
    ctx.obj = {"address": address, "token": token}


def _outcome(run: pb.Run) -> str:
    return pb.RunOutcome.Name(run.outcome).removeprefix("RUN_OUTCOME_").lower()


@runs.command("list")
@click.option("--model", "model_name", default="", help="Only runs of this model.")
@click.option("--limit", type=int, default=20)
@click.pass_context
def list_runs(ctx: click.Context, model_name: str, limit: int) -> None:
    """Recent runs, newest first."""
    found = _run(ctx, lambda c: c.list_runs(model_name, limit))
    table = Table("run", "model", "outcome", "version", "trigger", "started", "seconds", "metrics")
    for run in found:
        table.add_row(
            run.run_id,
            run.model_name,
            _outcome(run),
            str(run.version or ""),
            run.trigger,
            _when(run.started_at),
            f"{run.duration_seconds:.1f}",
            _metrics_text(run.metrics),
        )
    _console().print(table)


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.pass_context
def compare(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    """RUN_IDS side by side: outcome, data, every metric and parameter (differences highlighted)."""

    async def go(client: RegistryClient) -> list[pb.Run]:
        return [await client.get_run(run_id) for run_id in run_ids]

    found = _run(ctx, go)
    table = Table("", *[r.run_id for r in found])
    rows: list[tuple[str, list[str]]] = [
        ("model", [r.model_name for r in found]),
        ("outcome", [_outcome(r) for r in found]),
        ("reason", [r.outcome_reason for r in found]),
        ("version", [str(r.version or "") for r in found]),
        ("trigger", [f"{r.trigger} {r.trigger_id}".strip() for r in found]),
        ("data", [f"{_when(r.data_start)} .. {_when(r.data_end)}" for r in found]),
        ("data hash", [r.data_hash[:12] for r in found]),
        ("code", [r.code_revision for r in found]),
        ("seconds", [f"{r.duration_seconds:.1f}" for r in found]),
    ]
    for key in sorted({k for r in found for k in r.metrics}):
        rows.append((f"metric {key}", [f"{r.metrics[key]:.4f}" if key in r.metrics else "" for r in found]))
    for key in sorted({k for r in found for k in r.params}):
        rows.append((f"param {key}", [r.params.get(key, "") for r in found]))
    for label, values in rows:
        differs = len(set(values)) > 1
        table.add_row(label, *[f"[yellow]{v}[/yellow]" if differs else v for v in values])
    _console().print(table)
