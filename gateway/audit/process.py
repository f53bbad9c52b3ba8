"""The audit store in a child process, so ClickHouse work never holds the gateway's GIL.

Measured (bench/audit_stall.py): with the store on a thread of the gateway process, each chDB
insert stalled the event loop for milliseconds at a time (up to ~100 ms), which is what the
request path's p99 pays. In a child process the writer thread only pickles rows onto a pipe and
waits on it, which releases the GIL.

Same interface and failure semantics as `AuditStore`: any failure — including the child dying or
not answering in time — raises, the writer spools the batch, and the next call starts a new
child (as a network client would reconnect). The child exits on its own when the gateway process
goes away, so no orphan keeps the chDB directory locked.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, AuditStoreClosed

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_S = 180.0  # a cold chDB start plus migrations on a busy machine
_CALL_TIMEOUT_S = 300.0  # an insert or query; longer means the child is stuck
_CLOSE_TIMEOUT_S = 60.0
_PARENT_CHECK_S = 1.0


class AuditStoreProcessError(RuntimeError):
    """The store process failed an operation, died, or did not answer in time."""


class ProcessStore:
    """`AuditStore` semantics, executed by a child process (spawned, never forked)."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._opened = False  # between open() and close(): a lost child is replaced on the next call

    @property
    def is_open(self) -> bool:
        return self._opened

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def open(self) -> None:
        if self._opened:
            return
        self._start()
        self._opened = True

    def _start(self) -> None:
        # spawn: the gateway has threads and an event loop; a forked copy of them is undefined.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve_store,
            args=(theirs, self.settings, os.getpid()),
            name="llm-gateway-audit-store",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        try:
            self._exchange("open", (), _OPEN_TIMEOUT_S)
        except BaseException:
            self._stop(kill=True)
            raise

    def insert(self, rows: Sequence[Mapping[str, Any]], token: str) -> None:
        self._call("insert", list(rows), token)

    def insert_records(self, records: Sequence[Any], token: str) -> int:
        """Records cross the pipe as plain tuples; the child turns them into rows (CPU off the gateway)."""
        wire, unusable = [], 0
        for record in records:
            try:
                wire.append(record.to_wire())
            except Exception as exc:  # not an AuditRecord: a bug upstream; the rest still lands
                unusable += 1
                log.error(
                    "AUDIT: unusable record (%s) dropped: %s", type(record).__name__, type(exc).__name__
                )
        dropped: int = self._call("insert_wire", wire, token)
        return unusable + dropped

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("query", sql, dict(parameters or {}))
        return result

    def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._conn is None:
            return
        try:
            self._exchange("close", (), _CLOSE_TIMEOUT_S)
        finally:
            self._stop(kill=False)

    def _call(self, op: str, *args: Any, timeout: float = _CALL_TIMEOUT_S) -> Any:
        if not self._opened:
            raise AuditStoreClosed("audit store is not open")
        if self._conn is None:
            self._start()  # the last child died or hung: a new one
        return self._exchange(op, args, timeout)

    def _exchange(self, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        conn = self._conn
        assert conn is not None
        try:
            conn.send((op, args))
            if not conn.poll(timeout):
                self._stop(kill=True)
                raise AuditStoreProcessError(
                    f"the audit store process did not answer {op} within {timeout:g}s"
                )
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            self._stop(kill=True)
            raise AuditStoreProcessError(f"the audit store process is gone (exit code {code})") from exc
        if status != "ok":
            raise AuditStoreProcessError(value)
        return value

    def _stop(self, *, kill: bool) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return
        if kill and process.is_alive():
            process.kill()
        process.join(_CLOSE_TIMEOUT_S)
        if process.is_alive():
            log.error("audit store process %s did not exit; killing it", process.pid)
            process.kill()
            process.join()


def serve_store(conn: Connection, settings: AuditSettings, parent_pid: int) -> None:
    """The child: one AuditStore, operations from the pipe, until close, EOF or the parent is gone."""
    # Signals are the gateway's business: it drains, flushes through us, then sends "close".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = AuditStore(settings)
    try:
        while True:
            if not conn.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the gateway died without closing us
                continue
            try:
                op, args = conn.recv()
            except EOFError:
                return
            try:
                result = _run(store, op, args)
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(("ok", result))
            if op == "close":
                return
    finally:
        with contextlib.suppress(Exception):
            store.close()


def _run(store: AuditStore, op: str, args: tuple[Any, ...]) -> Any:
    if op == "open":
        store.open()
        return None
    if op == "insert":
        store.insert(*args)
        return None
    if op == "insert_wire":
        wire, token = args
        return store.insert_records([AuditRecord.from_wire(w) for w in wire], token)
    if op == "query":
        return store.query(*args)
    if op == "close":
        store.close()
        return None
    raise ValueError(f"unknown audit store operation {op!r}")
