"""The audit store in a child process, so ClickHouse work never holds the gateway's GIL.

Measured (bench/audit_stall.py): with the store on a thread of the gateway process, each chDB
insert and the Python that builds its rows stall the event loop for milliseconds at a time (tens
of ms at worst), which is what the request path's p99 pays, and cost the gateway process ~130 µs
of CPU per record. In a child process the writer's store thread only turns records into plain
tuples (`AuditRecord.to_wire`) and writes them to a pipe in small pickled parts (~25 µs per
record); waiting on the pipe releases the GIL. Rows are built and inserted in the child, which
runs at a lower CPU priority than the gateway.

Same interface and failure semantics as `AuditStore`: any failure — including the child dying or
not answering within `audit.process_timeout_s` — raises, the writer spools the batch, and the next
call starts a new child (as a network client would reconnect). The child exits on its own when
the gateway process goes away, so no orphan keeps the chDB directory locked.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import struct
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, AuditStoreClosed

log = logging.getLogger(__name__)

# Records per pipe message: pickling one part holds the GIL ~0.15 ms (a whole 1000-record batch
# at once: ~6 ms), and Connection.send writes it in one or two system calls.
_PART_ITEMS = 48
_JOIN_S = 60.0  # for the child to exit after close (or a kill)
_OPEN_TIMEOUT_MIN_S = 120.0  # a cold start (imports, chDB, migrations) on a busy machine
_PARENT_CHECK_S = 1.0
# The child's CPU priority (all its threads, chDB's included): below the gateway's, so its bursts
# (an insert, a merge) do not take a core from the event loop or from the writer thread handing
# over the GIL. Measured with bench/audit_stall.py: event-loop gaps over 1 ms 2-3 times fewer.
# It only slows the child when every core is busy; the writer's queue and spool absorb that.
_CHILD_NICENESS = 10


class AuditStoreProcessError(RuntimeError):
    """The store process failed an operation, died, or did not answer in time."""


class ProcessStore:
    """`AuditStore` semantics, executed by a child process (spawned, never forked).

    One call at a time (the writer's store thread): a call sends `(op, args, first part, n)`
    and then `n` more parts of its rows or records, and waits for one `(status, value)` answer.
    Few system calls per call on purpose: after each one the store thread must take the GIL
    back from the event loop.
    """

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._finalizer: multiprocessing.util.Finalize | None = None
        self._bound_s = 0.0  # the I/O timeout set on `_conn`
        self._opened = False  # between open() and close(): a lost child is replaced on the next call

    @property
    def is_open(self) -> bool:
        """True between a successful open() and close(), even while a lost child awaits replacement."""
        return self._opened

    @property
    def pid(self) -> int | None:
        """The child's pid, or None while there is no child."""
        return self._process.pid if self._process is not None else None

    def open(self) -> None:
        """Start the child; it connects and migrates the schema (as `AuditStore.open`)."""
        if self._opened:
            return
        self._start()
        self._opened = True

    def insert(self, rows: Sequence[Mapping[str, Any]], token: str) -> None:
        """Insert normalized rows as one block (as `AuditStore.insert`)."""
        self._call("insert", (token,), [dict(row) for row in rows])

    def insert_spooled(self, rows: Sequence[Mapping[str, Any]], token: str) -> None:
        """Insert rows read back from the spool; the child normalizes them."""
        self._call("insert_spooled", (token,), [dict(row) for row in rows])

    def insert_records(self, records: Sequence[Any], token: str) -> int:
        """Insert records; they cross as plain tuples and become rows in the child. Returns how many
        records were unusable (not AuditRecords: a bug upstream; the rest still lands)."""
        wires, unusable = [], 0
        for record in records:
            try:
                wires.append(record.to_wire())
            except Exception as exc:
                unusable += 1
                log.error(
                    "AUDIT: unusable record (%s) dropped: %s", type(record).__name__, type(exc).__name__
                )
        dropped: int = self._call("insert_wire", (token,), wires)
        return unusable + dropped

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query in the child (as `AuditStore.query`)."""
        result: list[dict[str, Any]] = self._call("query", (sql, dict(parameters or {})))
        return result

    def close(self) -> None:
        """Close the store in the child and wait for it to exit (killed after a timeout).

        Never raises: every insert that returned is already in the store, so a child that is
        gone or stuck at this point loses nothing.
        """
        if not self._opened:
            return
        self._opened = False
        if self._conn is None:
            return
        try:
            self._exchange("close", ())
        except AuditStoreProcessError as exc:
            log.warning("audit store process did not close cleanly: %s", exc)
        finally:
            self._stop(kill=False)

    # -- the child and the pipe ---------------------------------------------------------------

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
        # A store never closed (say, the gateway failed after startup) would otherwise hang the
        # interpreter's exit: multiprocessing joins its children then, and ours ignores SIGTERM.
        # Closing our end first (exit priority >= 0 runs before that join) lets the child go.
        self._finalizer = multiprocessing.util.Finalize(self, ours.close, exitpriority=10)
        try:
            self._exchange("open", (), timeout=max(self.settings.process_timeout_s, _OPEN_TIMEOUT_MIN_S))
        except BaseException:
            self._stop(kill=True)
            raise

    def _call(self, op: str, args: tuple[Any, ...] = (), items: Sequence[Any] = ()) -> Any:
        if not self._opened:
            raise AuditStoreClosed("audit store is not open")
        if self._conn is None:
            self._start()  # the last child died or hung: a new one
        return self._exchange(op, args, items)

    def _exchange(
        self, op: str, args: tuple[Any, ...], items: Sequence[Any] = (), timeout: float | None = None
    ) -> Any:
        conn, timeout = self._conn, timeout or self.settings.process_timeout_s
        assert conn is not None
        if timeout != self._bound_s:
            _bound_blocking(conn, timeout)
            self._bound_s = timeout
        parts = [items[i : i + _PART_ITEMS] for i in range(0, len(items), _PART_ITEMS)] or [[]]
        try:
            conn.send((op, args, parts[0], len(parts) - 1))
            for part in parts[1:]:
                conn.send(part)  # each pickled alone: the GIL is released between parts
            status, value = conn.recv()  # at most `timeout` without a byte (_bound_blocking)
        except BlockingIOError as exc:
            self._stop(kill=True)
            raise AuditStoreProcessError(
                f"the audit store process did not answer {op} within {timeout:g}s; killed it"
            ) from exc
        except (EOFError, OSError) as exc:
            code = self._stop(kill=True)
            raise AuditStoreProcessError(f"the audit store process is gone (exit code {code})") from exc
        if status != "ok":
            raise AuditStoreProcessError(value)
        return value

    def _stop(self, *, kill: bool) -> int | None:
        """Close our end (the child sees EOF), kill the child if asked, reap it; its exit code."""
        process, finalizer = self._process, self._finalizer
        self._process = self._conn = self._finalizer = None
        self._bound_s = 0.0
        if finalizer is not None:
            finalizer()
        if process is None:
            return None
        if kill:
            process.kill()
        process.join(_JOIN_S)
        if process.is_alive():
            log.error("audit store process %s did not exit; killing it", process.pid)
            process.kill()
            process.join()
        return process.exitcode


def _bound_blocking(conn: Connection, seconds: float) -> None:
    """Make a read or write on `conn` fail after `seconds` rather than block forever.

    A hung child stops reading: a large insert would block in send(), before the timeout on the
    answer could apply. (multiprocessing's Pipe is a socket pair on POSIX.)
    """
    timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def serve_store(conn: Connection, settings: AuditSettings, parent_pid: int) -> None:
    """The child: one AuditStore, operations from the pipe, until close, EOF or the parent is gone."""
    # Signals are the gateway's business: it drains, flushes through us, then sends "close".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(_CHILD_NICENESS)  # before chDB starts its threads: they inherit it
    store = AuditStore(settings)
    try:
        while True:
            if not conn.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the gateway died without closing us
                continue
            op, args, items, more = conn.recv()
            for _ in range(more):
                items.extend(conn.recv())
            try:
                conn.send(("ok", _run(store, op, args, items)))
            except Exception as exc:
                # The message crosses as text; the DSN's password never does.
                conn.send(("error", settings.redact(f"{type(exc).__name__}: {exc}")))
                continue
            if op == "close":
                return
    except (EOFError, OSError):
        return  # the gateway closed the pipe or died mid-call
    finally:
        with contextlib.suppress(Exception):
            store.close()


def _run(store: AuditStore, op: str, args: tuple[Any, ...], items: list[Any]) -> Any:
    if op == "open":
        store.open()
        return None
    if op == "insert":
        store.insert(items, *args)
        return None
    if op == "insert_spooled":
        store.insert_spooled(items, *args)
        return None
    if op == "insert_wire":
        return store.insert_wire(items, *args)
    if op == "query":
        return store.query(*args)
    if op == "close":
        store.close()
        return None
    raise ValueError(f"unknown audit store operation {op!r}")
