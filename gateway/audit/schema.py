"""The audit table in ClickHouse: columns, DDL, versioned migrations and retention."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from gateway.audit.settings import AuditSettings

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the audit table; `default` fills rows spooled before the column existed."""

    name: str
    type: str
    default: Any = ""
    codec: str = ""
    payload: bool = False  # payload columns expire after payload_retention_days


_LC = "LowCardinality(String)"
_TOKENS = "Nullable(UInt64)"  # unknown token count is NULL, never 0
_TAGS = "Array(LowCardinality(String))"
_COST = "Nullable(Decimal(18, 9))"  # exact USD to the nano-dollar; NULL when the price is unknown

# Keys of AuditRecord.to_row(), in table order. tests/audit/test_schema.py keeps them in step.
COLUMNS: tuple[Column, ...] = (
    Column("ts", "DateTime64(3, 'UTC')", default=None),
    Column("request_id", "String"),
    Column("trace_id", "String"),
    Column("span_id", "String"),
    Column("team", _LC),
    Column("key_id", _LC),
    Column("user", _LC),
    Column("provider", _LC),
    Column("provider_kind", _LC),
    Column("method", _LC),
    Column("endpoint", "String"),
    Column("operation", _LC),
    Column("outcome", _LC),
    Column("status", "UInt16", default=0),
    Column("duration_ms", "Float64", default=0.0),
    Column("ttfb_ms", "Nullable(Float64)", default=None),
    Column("requested_model", _LC),
    Column("response_model", _LC),
    Column("response_id", "String"),
    Column("stream", "Bool", default=False),
    Column("finish_reason", _LC),
    Column("error_type", _LC),
    Column("error_message", "String", codec="ZSTD(3)"),
    Column("rejection_rule", _LC),
    Column("input_tokens", _TOKENS, default=None),
    Column("output_tokens", _TOKENS, default=None),
    Column("cache_read_tokens", _TOKENS, default=None),
    Column("cache_write_tokens", _TOKENS, default=None),
    Column("reasoning_tokens", _TOKENS, default=None),
    Column("request_bytes", "UInt64", default=0),
    Column("response_bytes", "UInt64", default=0),
    Column("request_sha256", "String"),
    Column("response_sha256", "String"),
    Column("finding_rules", _TAGS, default=()),
    Column("finding_categories", _TAGS, default=()),
    Column("finding_severities", _TAGS, default=()),
    Column("finding_locations", _TAGS, default=()),
    Column("finding_actions", _TAGS, default=()),
    Column("client_address", "String"),
    Column("user_agent", _LC),
    Column("cost_usd", _COST, default=None),
    Column("flags", _TAGS, default=()),
    Column("request_preview", "String", codec="ZSTD(3)", payload=True),
    Column("response_preview", "String", codec="ZSTD(3)", payload=True),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN_TYPES: tuple[str, ...] = tuple(c.type for c in COLUMNS)
PAYLOAD_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.payload)


def _text(value: Any) -> str:
    if type(value) is not str:
        value = "" if value is None else str(value)
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from badly decoded bytes
        value = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in value)
    return value


def _unsigned(bits: int) -> Callable[[Any], int]:
    top = (1 << bits) - 1

    def coerce(value: Any) -> int:
        return min(max(int(value or 0), 0), top)

    return coerce


def _nullable(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else coerce(value)


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"ts must be a datetime, not {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


_COERCE: dict[str, Callable[[Any], Any]] = {
    "DateTime64(3, 'UTC')": _timestamp,
    "String": _text,
    _LC: _text,
    "UInt16": _unsigned(16),
    "UInt64": _unsigned(64),
    _TOKENS: _nullable(_unsigned(64)),
    "Float64": lambda v: float(v or 0.0),
    "Nullable(Float64)": _nullable(float),
    "Bool": bool,
    _TAGS: lambda v: [_text(item) for item in v or ()],
    _COST: _nullable(lambda v: Decimal(str(v)).quantize(Decimal("0.000000001"))),
}
_COLUMN_COERCE = tuple((c.name, c.default, _COERCE[c.type]) for c in COLUMNS)


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every column, each value of the column's type, so an insert cannot reject it.

    Missing keys take the column default; out-of-range numbers are clamped; text is made valid
    UTF-8; a missing or unreadable `ts` becomes the current time. Never raises.
    """
    normalized: dict[str, Any] = {}
    for name, default, coerce in _COLUMN_COERCE:
        value = row.get(name, default)
        try:
            normalized[name] = coerce(value)
        except (TypeError, ValueError, OverflowError):
            if name == "ts":
                # Keeping the row matters more than its exact time: rows = requests, always.
                log.warning("audit row without a valid ts: stored with the current time")
                normalized[name] = dt.datetime.now(dt.UTC)
            else:
                normalized[name] = coerce(default)
    return normalized


# Enough to catch a replayed batch: the writer replays within seconds, and each batch is one
# block per month partition it touches.
DEDUP_WINDOW = 1000


def _expiry(days: int) -> str:
    return f"toDateTime(ts) + INTERVAL {days} DAY"


def _column_ddl(column: Column, settings: AuditSettings) -> str:
    ddl = f"`{column.name}` {column.type}"
    if column.codec:
        ddl += f" CODEC({column.codec})"
    if column.payload and settings.payload_retention_days:
        ddl += f" TTL {_expiry(settings.payload_retention_days)}"
    return ddl


def audit_table_ddl(settings: AuditSettings) -> str:
    """CREATE TABLE for the audit log, with the configured retention baked in."""
    columns = ",\n    ".join(_column_ddl(c, settings) for c in COLUMNS)
    ttl = f"TTL {_expiry(settings.metadata_retention_days)}\n" if settings.metadata_retention_days else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {settings.qualified_table}\n(\n    {columns},\n"
        # `show` looks rows up by request id, traces by trace id: outside the sort key
        "    INDEX idx_request_id request_id TYPE bloom_filter(0.001) GRANULARITY 4,\n"
        "    INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 4\n)\n"
        "ENGINE = MergeTree\n"
        "PARTITION BY toYYYYMM(ts)\n"
        "ORDER BY (team, key_id, ts)\n"
        f"{ttl}"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. Statements must be idempotent (IF NOT EXISTS): replicas may race."""

    version: int
    description: str
    statements: Callable[[AuditSettings], list[str]]


def _add_columns(settings: AuditSettings, names: Sequence[str]) -> list[str]:
    """ALTER TABLE … ADD COLUMN IF NOT EXISTS for columns a later version introduced (idempotent)."""
    by_name = {c.name: c for c in COLUMNS}
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {_column_ddl(by_name[n], settings)}" for n in names)
    return [f"ALTER TABLE {settings.qualified_table} {adds}"]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the audit table", lambda s: [audit_table_ddl(s)]),
    Migration(2, "cost in USD and flags (limits, budgets)", lambda s: _add_columns(s, ("cost_usd", "flags"))),
)
schema_version: int = MIGRATIONS[-1].version


def _migrations_ddl(database: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{MIGRATIONS_TABLE}`\n"
        "(\n    `table_name` LowCardinality(String),\n    `version` UInt32,\n"
        "    `description` String,\n    `applied_at` DateTime64(3, 'UTC')\n)\n"
        "ENGINE = MergeTree\nORDER BY (table_name, version)"
    )


def applied_versions(client: Client, settings: AuditSettings) -> set[int]:
    """Versions already applied to the configured table."""
    result = client.query(
        f"SELECT DISTINCT version FROM `{settings.target_database}`.`{MIGRATIONS_TABLE}` "
        "WHERE table_name = {table:String}",
        parameters={"table": settings.table},
    )
    return {int(row[0]) for row in result.result_rows}


def migrate(
    client: Client, settings: AuditSettings, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Create the database, apply pending migrations in order, then apply retention; returns new versions."""
    database = settings.target_database
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.command(_migrations_ddl(database))
    done = applied_versions(client, settings)
    newer = {v for v in done if v > max((m.version for m in migrations), default=0)}
    if newer:
        log.warning("audit table %s has schema versions %s newer than this gateway", settings.table, newer)
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements(settings):
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE,
            [[settings.table, migration.version, migration.description, dt.datetime.now(dt.UTC)]],
            column_names=["table_name", "version", "description", "applied_at"],
            database=database,
        )
        log.info("audit schema: applied migration %d (%s)", migration.version, migration.description)
        applied.append(migration.version)
    apply_retention(client, settings)
    return applied


_TTL_DAYS = r"TTL\s+toDateTime\(ts\)\s*\+\s*(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)"


def current_retention(create_query: str) -> tuple[int, dict[str, int]]:
    """(table TTL days, {payload column: TTL days}) parsed from a CREATE TABLE; 0 = no TTL, -1 = unparsed."""
    table_ttl = re.search(rf"\)\s*ENGINE\b.*?{_TTL_DAYS}", create_query, re.S)
    if table_ttl:
        table_days = int(table_ttl.group(1) or table_ttl.group(2))
    else:
        table_days = -1 if re.search(r"\)\s*ENGINE\b.*\bTTL\b", create_query, re.S) else 0
    columns: dict[str, int] = {}
    for name in PAYLOAD_COLUMNS:
        definition = re.search(rf"`{name}`\s+([^,\n]*)", create_query)
        text = definition.group(1) if definition else ""
        ttl = re.search(_TTL_DAYS, text)
        if ttl:
            columns[name] = int(ttl.group(1) or ttl.group(2))
        else:
            columns[name] = -1 if "TTL" in text or not definition else 0
    return table_days, columns


def apply_retention(client: Client, settings: AuditSettings) -> list[str]:
    """Bring the table and payload-column TTLs to the configured retention; returns the ALTERs run.

    Runs at every startup. It compares first because MODIFY TTL rewrites existing parts.
    """
    table = settings.qualified_table
    result = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": settings.target_database, "table": settings.table},
    )
    table_days, column_days = current_retention(str(result.result_rows[0][0]))
    statements: list[str] = []
    want = settings.metadata_retention_days
    if table_days != want:
        statements.append(
            f"ALTER TABLE {table} MODIFY TTL {_expiry(want)}" if want else f"ALTER TABLE {table} REMOVE TTL"
        )
    want = settings.payload_retention_days
    for name in PAYLOAD_COLUMNS:
        if column_days[name] != want:
            change = f"TTL {_expiry(want)}" if want else "REMOVE TTL"
            statements.append(f"ALTER TABLE {table} MODIFY COLUMN `{name}` {change}")
    for statement in statements:
        client.command(statement)
        log.info("audit schema: retention changed: %s", statement)
    return statements
