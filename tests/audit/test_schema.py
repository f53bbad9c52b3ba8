"""The audit table as created in a real chDB: types, layout, migrations, retention."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import clickhouse_connect

from gateway.audit.record import AuditRecord
from gateway.audit.schema import (
    COLUMN_NAMES,
    MIGRATIONS,
    Migration,
    apply_retention,
    current_retention,
    migrate,
    normalize_row,
    schema_version,
)
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, client_arguments
from tests.audit.support import make_record


def create_query(store: AuditStore) -> str:
    rows = store.query(f"SHOW CREATE TABLE {store.settings.qualified_table}")
    return str(next(iter(rows[0].values())))


def migration_rows(store: AuditStore) -> list[dict[str, Any]]:
    database = store.settings.target_database
    return store.query(f"SELECT table_name, version FROM `{database}`.schema_migrations ORDER BY version")


def test_columns_are_the_record_row_keys() -> None:
    assert sorted(COLUMN_NAMES) == sorted(make_record(1).to_row())
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES)


def test_table_layout(store: AuditStore) -> None:
    ddl = create_query(store)
    expected = [
        "`ts` DateTime64(3, 'UTC')",
        "`provider` LowCardinality(String)",
        "`outcome` LowCardinality(String)",
        "`status` UInt16",
        "`duration_ms` Float64",
        "`ttfb_ms` Nullable(Float64)",
        "`stream` Bool",
        "`input_tokens` Nullable(UInt64)",
        "`reasoning_tokens` Nullable(UInt64)",
        "`finding_rules` Array(LowCardinality(String))",
        "`request_sha256` String",
        "`request_preview` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(30)",
        "`response_preview` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(30)",
        "ENGINE = MergeTree",
        "PARTITION BY toYYYYMM(ts)",
        "ORDER BY (team, key_id, ts)",
        "\nTTL toDateTime(ts) + toIntervalDay(365)",
        "non_replicated_deduplication_window = 1000",
        "INDEX idx_request_id request_id TYPE bloom_filter",
    ]
    for fragment in expected:
        assert fragment in ddl, fragment


def test_migrations_are_recorded_once_across_restarts(settings: AuditSettings) -> None:
    for _ in range(3):
        store = AuditStore(settings)
        store.open()
        rows = migration_rows(store)
        store.close()
        assert rows == [{"table_name": "audit_log", "version": 1}, {"table_name": "audit_log", "version": 2}]
    assert schema_version == MIGRATIONS[-1].version == 2


def test_a_version_1_table_gets_the_cost_and_flags_columns(settings: AuditSettings) -> None:
    client = clickhouse_connect.get_client(**client_arguments(settings))
    try:
        assert migrate(client, settings, MIGRATIONS[:1]) == [1]
        client.command(f"ALTER TABLE {settings.qualified_table} DROP COLUMN cost_usd, DROP COLUMN flags")
        assert migrate(client, settings) == [2]
        columns = dict(
            (row[0], row[1]) for row in client.query(f"DESCRIBE TABLE {settings.qualified_table}").result_rows
        )
    finally:
        client.close()
    assert columns["cost_usd"] == "Nullable(Decimal(18, 9))"
    assert columns["flags"] == "Array(LowCardinality(String))"


def test_a_new_migration_is_applied_once(settings: AuditSettings) -> None:
    add_column = Migration(
        3,
        "add a column",
        lambda s: [
            f"ALTER TABLE {s.qualified_table} ADD COLUMN IF NOT EXISTS `region` LowCardinality(String)"
        ],
    )
    client = clickhouse_connect.get_client(**client_arguments(settings))
    try:
        assert migrate(client, settings) == [1, 2]
        assert migrate(client, settings, (*MIGRATIONS, add_column)) == [3]
        assert migrate(client, settings, (*MIGRATIONS, add_column)) == []
        columns = client.query(f"DESCRIBE TABLE {settings.qualified_table}").result_rows
    finally:
        client.close()
    assert "region" in [column[0] for column in columns]


def test_retention_change_applies_on_restart(settings: AuditSettings) -> None:
    store = AuditStore(settings)
    store.open()
    store.close()

    shorter = dataclasses.replace(settings, metadata_retention_days=90, payload_retention_days=7)
    store = AuditStore(shorter)
    store.open()
    ddl = create_query(store)
    store.close()
    assert "\nTTL toDateTime(ts) + toIntervalDay(90)" in ddl
    assert "`request_preview` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(7)" in ddl
    assert "`response_preview` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(7)" in ddl


def test_retention_is_not_touched_when_unchanged(settings: AuditSettings) -> None:
    client = clickhouse_connect.get_client(**client_arguments(settings))
    try:
        migrate(client, settings)
        assert apply_retention(client, settings) == []  # MODIFY TTL would rewrite parts
    finally:
        client.close()


def test_zero_retention_keeps_forever(settings: AuditSettings) -> None:
    forever = dataclasses.replace(settings, metadata_retention_days=0, payload_retention_days=0)
    client = clickhouse_connect.get_client(**client_arguments(settings))
    try:
        migrate(client, settings)
        assert len(apply_retention(client, forever)) == 3
        ddl = client.command(f"SHOW CREATE TABLE {settings.qualified_table}")
        assert apply_retention(client, forever) == []
    finally:
        client.close()
    assert "TTL" not in str(ddl)


def test_current_retention_parses_server_ddl() -> None:
    ddl = (
        "CREATE TABLE db.t (`ts` DateTime64(3, 'UTC'), "
        "`request_preview` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(30), "
        "`response_preview` String CODEC(ZSTD(3))) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) "
        "ORDER BY (team, key_id, ts) TTL toDateTime(ts) + toIntervalDay(365) "
        "SETTINGS index_granularity = 8192"
    )
    assert current_retention(ddl) == (365, {"request_preview": 30, "response_preview": 0})


def test_normalize_row_makes_any_row_insertable() -> None:
    row = make_record(1).to_row()
    row.update(
        status=70000,
        request_bytes=-5,
        input_tokens=None,
        output_tokens="12",
        ttfb_ms=None,
        duration_ms=None,
        request_preview="broken \udcff surrogate",
        finding_rules=("a", None),
    )
    del row["user_agent"]
    normalized = normalize_row(row)
    assert list(normalized) == list(COLUMN_NAMES)
    assert normalized["status"] == 65535
    assert normalized["request_bytes"] == 0
    assert normalized["input_tokens"] is None
    assert normalized["output_tokens"] == 12
    assert normalized["ttfb_ms"] is None
    assert normalized["duration_ms"] == 0.0
    assert normalized["request_preview"] == "broken \ufffd surrogate"
    assert normalized["finding_rules"] == ["a", ""]
    assert normalized["user_agent"] == ""


def test_normalize_row_keeps_a_row_without_valid_ts() -> None:
    row = make_record(1).to_row()
    row["ts"] = "not a time"
    before = dt.datetime.now(dt.UTC)
    assert normalize_row(row)["ts"] >= before


def test_normalize_row_round_trips_a_record() -> None:
    record = make_record(7)
    assert AuditRecord.from_row(normalize_row(record.to_row())) == record
