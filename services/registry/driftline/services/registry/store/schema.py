"""The registry's tables (SQLAlchemy Core). Times are integer microseconds since the epoch, UTC,
so SQLite and PostgreSQL store and compare them the same way."""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    event,
)

metadata = MetaData()

NAME = String(128)
#: SQLite only auto-increments an INTEGER PRIMARY KEY.
AUTO_ID = BigInteger().with_variant(Integer, "sqlite")

models = Table(
    "models",
    metadata,
    Column("name", NAME, primary_key=True),
    Column("latest_version", Integer, nullable=False),
    Column("locked", Boolean, nullable=False, default=False),
    Column("lock_owner", String(64), nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
)

versions = Table(
    "model_versions",
    metadata,
    Column("name", NAME, nullable=False),
    Column("version", Integer, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("signature_json", Text, nullable=False),
    Column("feature_set", String(128), nullable=False),
    Column("feature_set_version", Integer, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("params_json", Text, nullable=False),
    Column("lineage_json", Text, nullable=False),
    Column("run_id", String(128), nullable=False),
    Column("tags_json", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(160), nullable=False),
    PrimaryKeyConstraint("name", "version"),
    ForeignKeyConstraint(["name"], ["models.name"]),
    Index("ix_model_versions_run", "name", "run_id"),
)

# Kept apart from the version row: it can be large, and most reads leave it out.
references = Table(
    "reference_samples",
    metadata,
    Column("name", NAME, nullable=False),
    Column("version", Integer, nullable=False),
    Column("feature_names_json", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    # Little-endian float64, row-major.
    Column("values", LargeBinary, nullable=False),
    Column("scores", LargeBinary, nullable=False),
    PrimaryKeyConstraint("name", "version"),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

# A row per archived version: a table of its own, so databases made before archiving existed
# gain it from create_all, with no migration.
archived = Table(
    "archived_versions",
    metadata,
    Column("name", NAME, nullable=False),
    Column("version", Integer, nullable=False),
    Column("archived_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "version"),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

# No row means "unset": compare-and-swap from 0 is an INSERT that the primary key lets only one win.
aliases = Table(
    "aliases",
    metadata,
    Column("name", NAME, nullable=False),
    Column("alias", NAME, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "alias"),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

audit = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", String(160), nullable=False),
    Column("action", String(32), nullable=False),
    Column("model_name", NAME, nullable=False),
    Column("subject", String(160), nullable=False),
    Column("reason", Text, nullable=False),
    Column("before_json", Text, nullable=False),
    Column("after_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_subject", "model_name", "subject", "seq"),
)

# One row: the last sequence number and hash. Writers lock it, which serialises appends to the
# chain, and it reveals a truncated tail.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at_us", BigInteger, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("model_name", NAME, nullable=False),
    Column("params_json", Text, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("data_start_us", BigInteger, nullable=True),
    Column("data_end_us", BigInteger, nullable=True),
    Column("data_hash", String(128), nullable=False),
    Column("code_revision", String(128), nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("outcome_reason", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("trigger_id", String(128), nullable=False),
    Column("started_at_us", BigInteger, nullable=True),
    Column("recorded_at_us", BigInteger, nullable=False),
    Index("ix_runs_model", "model_name", "recorded_at_us"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", AUTO_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("model_name", NAME, nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("published_at_us", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_outbox_pending", "published_at_us", "id"),
)

# Which relay publishes: only the lease holder, so several replicas never interleave events.
outbox_lease = Table(
    "outbox_lease",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
)

# The audit log is append-only in the database too; the hash chain catches what gets past this.
_APPEND_ONLY = "audit log is append-only"
for _ddl in (
    f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
    f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
):
    event.listen(audit, "after_create", DDL(_ddl).execute_if(dialect="sqlite"))
for _ddl in (
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
):
    event.listen(audit, "after_create", DDL(_ddl).execute_if(dialect="postgresql"))
