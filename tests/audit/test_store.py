"""AuditStore against a real chDB directory; DSN handling for both store kinds."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from gateway.audit.record import AuditRecord, Usage
from gateway.audit.schema import normalize_row
from gateway.audit.settings import AuditSettings
from gateway.audit.store import READONLY, AuditStore, AuditStoreClosed, client_arguments
from tests.audit.support import make_record


def count(store: AuditStore) -> int:
    return int(store.query(f"SELECT count() AS n FROM {store.settings.qualified_table}")[0]["n"])


def test_insert_and_read_back_every_field(store: AuditStore) -> None:
    records = [
        make_record(1),
        make_record(2, usage=Usage(), findings=(), ttfb_ms=None, stream=False),
        make_record(3, request_preview="", response_preview="🎉" * 1000, user="ünïcødé"),
    ]
    store.insert([normalize_row(r.to_row()) for r in records], token="t-1")
    rows = store.query(f"SELECT * FROM {store.settings.qualified_table} ORDER BY ts")
    assert [AuditRecord.from_row(row) for row in rows] == records
    assert rows[1]["input_tokens"] is None  # unknown, not 0


def test_same_token_inserts_once(store: AuditStore) -> None:
    batch = [normalize_row(make_record(i).to_row()) for i in range(10)]
    store.insert(batch, token="replayed")
    store.insert(batch, token="replayed")
    assert count(store) == 10
    store.insert(batch, token="another")
    assert count(store) == 20


def test_queries_bind_parameters_and_cannot_write(store: AuditStore) -> None:
    store.insert([normalize_row(make_record(i).to_row()) for i in range(3)], token="t")
    table = store.settings.qualified_table
    rows = store.query(
        f"SELECT request_id FROM {table} WHERE request_id = {{rid:String}}", {"rid": "req-000002"}
    )
    assert rows == [{"request_id": "req-000002"}]
    with pytest.raises(DatabaseError, match="readonly"):
        store.query(f"INSERT INTO {table} (request_id) VALUES ('forged')")
    with pytest.raises(DatabaseError):
        store.query(f"ALTER TABLE {table} DELETE WHERE 1")
    store.insert([normalize_row(make_record(9).to_row())], token="after-readonly")  # writer unaffected
    assert count(store) == 4


def test_closed_store_refuses(settings: AuditSettings) -> None:
    store = AuditStore(settings)
    with pytest.raises(AuditStoreClosed):
        store.insert([], token="x")
    store.open()
    store.close()
    assert not store.is_open
    with pytest.raises(AuditStoreClosed):
        store.query("SELECT 1")


def test_reopening_keeps_rows(settings: AuditSettings) -> None:
    store = AuditStore(settings)
    store.open()
    store.insert([normalize_row(make_record(1).to_row())], token="t")
    store.close()
    store.open()
    assert count(store) == 1
    store.close()


def test_client_arguments_for_chdb() -> None:
    settings = AuditSettings(dsn="chdb://./data/audit")
    assert client_arguments(settings) == {"interface": "chdb", "path": "./data/audit"}
    assert client_arguments(settings, readonly=True)["settings"] == {"readonly": READONLY}


def test_client_arguments_for_a_server() -> None:
    settings = AuditSettings(dsn="https://writer:p%40ss@ch.example:8443/audit?compress=lz4")
    arguments = client_arguments(settings)
    assert arguments["interface"] == "https"  # from the scheme; clickhouse-connect alone goes by the port
    assert arguments["dsn"] == "https://writer:p%40ss@ch.example:8443?compress=lz4"  # db created by migrate
    assert settings.qualified_table == "`audit`.`audit_log`"
