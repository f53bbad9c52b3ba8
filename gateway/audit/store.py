"""The audit table behind one clickhouse-connect client: embedded chDB or a ClickHouse server.

Every method blocks and the clients are not thread-safe: the writer calls them from its one
store thread.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from gateway.audit.record import AuditRecord
from gateway.audit.schema import COLUMN_NAMES, COLUMN_TYPES, COLUMNS, migrate, normalize_row
from gateway.audit.settings import AuditSettings, chdb_path

log = logging.getLogger(__name__)

# Reads through `query` may not change data or the schema (the admin endpoint runs them),
# but may set per-query settings (level 2).
READONLY = 2
_CONNECT_TIMEOUT_S = 10
_SEND_RECEIVE_TIMEOUT_S = 120


def table_rows(
    records: Iterable[Any], to_row: Callable[[Any], dict[str, Any]] = operator.methodcaller("to_row")
) -> tuple[list[dict[str, Any]], int]:
    """(normalized table rows, count of records that could not become rows).

    A record that cannot become a row (not an AuditRecord: a bug upstream) is logged and left
    out, so one bad object never holds back the rest.
    """
    rows, unusable = [], 0
    for record in records:
        try:
            rows.append(normalize_row(to_row(record)))
        except Exception as exc:
            unusable += 1
            log.error("AUDIT: unusable record (%s) dropped: %s", type(record).__name__, type(exc).__name__)
    return rows, unusable


class AuditStoreClosed(RuntimeError):
    """The store is not open."""


def client_arguments(settings: AuditSettings, *, readonly: bool = False) -> dict[str, Any]:
    """Keyword arguments of clickhouse_connect.get_client for the configured DSN.

    chdb:// paths are taken literally (clickhouse-connect would read `chdb://./data/audit` as
    directory `.` and database `data`). For http(s) the scheme picks the interface and the URL
    path is dropped: the database may not exist yet, and SQL names it explicitly anyway.
    """
    options: dict[str, Any] = {"settings": {"readonly": READONLY}} if readonly else {}
    if settings.embedded:
        return {"interface": "chdb", "path": chdb_path(settings.dsn), **options}
    parts = urlsplit(settings.dsn)
    return {
        "dsn": parts._replace(path="").geturl(),
        "interface": parts.scheme,
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "send_receive_timeout": _SEND_RECEIVE_TIMEOUT_S,
        **options,
    }


class AuditStore:
    """The audit table: `open()` (connect + migrate), `insert`, `query`, `close()`."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._writer: Client | None = None
        self._reader: Client | None = None

    @property
    def is_open(self) -> bool:
        """True between a successful open() and close()."""
        return self._writer is not None

    def open(self) -> None:
        """Connect and bring the schema and retention up to date."""
        if self.is_open:
            return
        if self.settings.embedded:
            os.makedirs(chdb_path(self.settings.dsn), exist_ok=True)
        writer = clickhouse_connect.get_client(**client_arguments(self.settings))
        try:
            migrate(writer, self.settings)
            reader = clickhouse_connect.get_client(**client_arguments(self.settings, readonly=True))
        except BaseException:
            writer.close()
            raise
        self._writer, self._reader = writer, reader

    def insert(self, rows: Sequence[Mapping[str, Any]], token: str) -> None:
        """Insert normalized rows as one block; a repeat with the same token is a no-op."""
        if self._writer is None:
            raise AuditStoreClosed("audit store is not open")
        defaults = [(c.name, c.default) for c in COLUMNS]
        data = [[row.get(name, default) for name, default in defaults] for row in rows]
        self._writer.insert(
            self.settings.table,
            data,
            column_names=COLUMN_NAMES,
            database=self.settings.target_database,
            column_type_names=COLUMN_TYPES,  # spares a DESCRIBE per insert
            settings={"insert_deduplication_token": token},
        )

    def insert_records(self, records: Sequence[Any], token: str) -> int:
        """Build the rows of `records` and insert them; returns how many records were unusable."""
        rows, unusable = table_rows(records)
        self.insert(rows, token)
        return unusable

    def insert_wire(self, wires: Sequence[tuple[Any, ...]], token: str) -> int:
        """`insert_records` for records sent as `AuditRecord.to_wire()` tuples; returns the unusable count."""
        rows, unusable = table_rows(wires, AuditRecord.row_from_wire)
        self.insert(rows, token)
        return unusable

    def insert_spooled(self, rows: Sequence[Mapping[str, Any]], token: str) -> None:
        """Insert rows read back from the spool, normalized again (the file may come from another
        version of the gateway)."""
        self.insert([normalize_row(dict(row)) for row in rows], token)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query; `{name:Type}` placeholders are bound server-side from `parameters`."""
        if self._reader is None:
            raise AuditStoreClosed("audit store is not open")
        result = self._reader.query(sql, parameters=dict(parameters or {}))
        return list(result.named_results())

    def close(self) -> None:
        """Disconnect (releases the chDB directory for the next open in this process)."""
        for client in (self._reader, self._writer):
            if client is not None:
                client.close()
        self._writer = self._reader = None
