"""The audit writer: the request path enqueues records; a background task batches them into the store.

Guarantees: `submit` never blocks, raises or drops. Rows reach the table in submission order,
through the spool whenever the store fails: while the spool holds anything, new batches are
spooled behind it and the spool is replayed oldest first. Each batch carries a deduplication
token, so a batch replayed after an insert that did land (but looked failed) is not doubled.

Threads: one for the store (chDB is blocking and its client not thread-safe), one for spool
files. Records become rows on those threads, not on the event loop. With `audit.isolation:
process` (the default) the store itself runs in a child process (gateway/audit/process.py): the
store thread only hands it records as plain tuples, and the child builds the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.audit.process import ProcessStore
from gateway.audit.record import AuditRecord
from gateway.audit.schema import normalize_row
from gateway.audit.settings import AuditSettings
from gateway.audit.spool import Spool
from gateway.audit.store import AuditStore, table_rows

log = logging.getLogger(__name__)

T = TypeVar("T")
Store = AuditStore | ProcessStore
StoreFactory = Callable[[AuditSettings], Store]

# While a store call is in flight, how often to check whether the queue overflows max_queue.
_OVERFLOW_CHECK_S = 0.05
_ERROR_CHARS = 300


class AuditUnavailable(RuntimeError):
    """The audit store is not open (not started, closed, or unreachable since startup)."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters (rows, not batches)."""

    queued: int  # submitted, not yet in the store or the spool
    written: int  # inserted straight into the store
    spooled: int  # written to the spool
    replayed: int  # moved from the spool into the store
    dropped: int  # lost; stays 0 unless both store and spool fail at close
    spool_backlog: int  # rows in the spool now
    spool_corrupt: int  # spool files moved aside as unreadable
    last_error: str  # "" once everything is healthy again


@dataclass(slots=True)
class _Batch:
    """Records cut from the queue together; `order` fixes its place in the spool, `token` dedups it."""

    order: str
    token: str
    records: list[AuditRecord]
    unusable: int = 0  # records that could not become rows (not AuditRecords: a bug upstream)
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def rows(self) -> list[dict[str, Any]]:
        """The table rows, built once on whichever worker thread needs them first."""
        if self._rows is None:
            self._rows, self.unusable = table_rows(self.records)
        return self._rows


def default_store_factory(settings: AuditSettings) -> StoreFactory:
    """The store as `audit.isolation` says: in a child process or on a thread of this one."""
    if settings.isolation == "process":
        return ProcessStore
    return AuditStore


class AuditWriter:
    """Batches audit records into the store off the event loop, spooling to disk when it fails."""

    def __init__(self, settings: AuditSettings, store_factory: StoreFactory | None = None) -> None:
        self.settings = settings
        self._store_factory = store_factory or default_store_factory(settings)
        self._store: Store | None = None
        self._spool: Spool | None = None
        self._queue: deque[tuple[float, AuditRecord]] = deque()
        self._pending: deque[_Batch] = deque()  # cut, not yet placed; in order
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one cycle at a time: the pump's, flush()'s or close()'s
        self._store_thread: ThreadPoolExecutor | None = None
        self._spool_thread: ThreadPoolExecutor | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._next_retry = 0.0
        self._written = self._spooled = self._replayed = self._dropped = 0
        self._last_error = ""

    # -- request path -------------------------------------------------------------------------

    def submit(self, record: AuditRecord) -> None:
        """Enqueue one record. O(1); never blocks, raises or drops. Call on the event loop thread."""
        try:
            if self._closed:
                self._spool_after_close(record)
                return
            self._queue.append((time.monotonic(), record))
            if len(self._queue) >= self.settings.batch_size:
                self._wake.set()
        except Exception as exc:  # only the after-close path can fail; never fail the request for it
            self._dropped += 1
            self._note_error("submit after close", exc)
            log.critical("AUDIT: a record submitted after close() is lost")

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and the store, then batch in the background (replaying any old spool first).

        If the store cannot be opened the writer still starts: records are spooled, the error is
        in `stats.last_error`, and opening is retried every `replay_interval_s`.
        """
        if self._pump is not None:
            return
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-store")
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-spool")
        self._spool = await self._on_spool(Spool, self.settings.spool_dir)
        if self._spool.backlog():
            log.warning("audit spool holds %d rows from a previous run; replaying", self._spool.backlog())
        async with self._lock:
            await self._open_store()
        self._pump = asyncio.create_task(self._run(), name="audit-writer")

    async def flush(self) -> None:
        """Write everything submitted so far, and replay the spool as far as the store takes it."""
        if self._pump is None or self._closed:
            raise RuntimeError("AuditWriter.flush() needs a started, open writer")
        async with self._lock:
            await self._cycle(force=True)

    async def close(self) -> None:
        """Write what is queued (to the spool if the store is down or the spool not empty), then stop."""
        if self._closed or self._closing:
            return
        if self._pump is None and self._queue:
            await self.start()  # never started, but holds records: store or spool them
        self._closing = True
        self._wake.set()
        if self._pump is not None:
            await self._pump
        async with self._lock:
            if self._spool is not None:
                self._cut_batches(force=True)
                await self._place_pending()
            lost = sum(len(batch) for batch in self._pending) + len(self._queue)
            if lost:
                self._dropped += lost
                log.critical("AUDIT: %d records could not be stored or spooled and are lost", lost)
            self._pending.clear()
            self._queue.clear()
            self._closed = True
            if self._store is not None:
                await self._on_store(self._store.close)
                self._store = None
            if self._spool is not None:
                self._spool.close()
        for pool in (self._store_thread, self._spool_thread):
            if pool is not None:
                pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        """True while the store is open."""
        return self._store is not None and not self._closed

    @property
    def stats(self) -> WriterStats:
        """Counters for metrics and the status endpoint."""
        spool = self._spool
        return WriterStats(
            queued=len(self._queue) + sum(len(batch) for batch in self._pending),
            written=self._written,
            spooled=self._spooled,
            replayed=self._replayed,
            dropped=self._dropped,
            spool_backlog=spool.backlog() if spool else 0,
            spool_corrupt=spool.corrupt_count if spool else 0,
            last_error=self._last_error,
        )

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query on the store thread (for the CLI and admin endpoints)."""
        store = self._store
        if store is None or self._closed:
            raise AuditUnavailable(self._last_error or "audit store is not open")
        return await self._on_store(store.query, sql, parameters)

    # -- the background cycle -----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._seconds_to_next_cycle())
            self._wake.clear()
            if self._closing:
                return
            async with self._lock:
                try:
                    await self._cycle(force=False)
                except Exception as exc:  # the pump must survive anything; rows stay queued
                    self._note_error("cycle", exc)
                    self._back_off()

    def _seconds_to_next_cycle(self) -> float:
        now = time.monotonic()
        waits = [self.settings.flush_interval_s]
        if self._queue:
            waits.append(self._queue[0][0] + self.settings.flush_interval_s - now)
        if self._pending or self._store is None or self._spool_backlog():
            waits.append(self._next_retry - now)
        return max(min(waits), 0.001)

    async def _cycle(self, *, force: bool) -> None:
        """Open the store if due, cut and place batches, then replay the spool if due."""
        retry_due = force or time.monotonic() >= self._next_retry
        if self._store is None and retry_due:
            await self._open_store()
        self._cut_batches(force=force)
        await self._place_pending()
        if self._store is not None and self._spool_backlog() and not self._pending and retry_due:
            await self._replay()

    async def _open_store(self) -> None:
        def open_store() -> Store:
            store = self._store_factory(self.settings)
            store.open()
            return store

        try:
            self._store = await self._on_store(open_store, spill=self._spool is not None)
        except Exception as exc:
            self._back_off()
            self._note_error(f"open {self.settings.redacted_dsn()}", exc)
            return
        self._last_error = ""
        log.info("audit store open: %s %s", self.settings.redacted_dsn(), self.settings.qualified_table)

    def _cut_batches(self, *, force: bool) -> None:
        """Move records from the queue into batches: full ones always, a partial one when old or forced."""
        assert self._spool is not None
        queue, size = self._queue, self.settings.batch_size
        deadline = time.monotonic() - self.settings.flush_interval_s
        while len(queue) >= size or (queue and (force or queue[0][0] <= deadline)):
            records = [queue.popleft()[1] for _ in range(min(size, len(queue)))]
            order = self._spool.next_order()
            self._pending.append(_Batch(order, f"{order}-{uuid.uuid4().hex}", records))

    async def _place_pending(self) -> None:
        """Insert or spool the cut batches in order; stop (keeping them in memory) if both fail."""
        while self._pending:
            batch = self._pending[0]
            if self._store is not None and not self._spool_backlog():
                unusable = await self._insert_records(batch)
                if unusable is not None:
                    self._pending.popleft()
                    self._written += len(batch) - unusable
                    self._dropped += unusable
                    continue
                self._back_off()
            if not await self._to_spool(batch):
                self._back_off()
                return
            self._pending.popleft()

    async def _replay(self) -> None:
        """Move spooled batches into the store, oldest first, until empty or the store fails."""
        assert self._spool is not None
        while self._spool_backlog():
            item = await self._on_spool(self._spool.oldest)
            if item is None:
                return
            if not await self._insert_spooled(item.rows, item.token):
                self._back_off()
                return
            try:
                await self._on_spool(self._spool.remove, item.path)
            except OSError as exc:
                self._note_error("spool remove", exc)  # replaying it again is harmless (token)
                self._back_off()
                return
            self._replayed += len(item.rows)
            # New batches keep flowing to the spool behind the backlog during a long replay.
            self._cut_batches(force=False)
            await self._place_pending()

    async def _insert_spooled(self, rows: list[dict[str, Any]], token: str) -> bool:
        """Insert rows read back from the spool (the store normalizes them: the file may come from
        another version of the gateway)."""
        store = self._store
        assert store is not None
        try:
            await self._on_store(store.insert_spooled, rows, token, spill=True)
        except Exception as exc:
            self._note_error("insert", exc)
            return False
        self._last_error = ""
        return True

    async def _insert_records(self, batch: _Batch) -> int | None:
        """Insert a batch (the store builds the rows); the count of unusable records, or None on failure."""
        store = self._store
        assert store is not None
        try:
            unusable: int = await self._on_store(store.insert_records, batch.records, batch.token, spill=True)
        except Exception as exc:
            self._note_error("insert", exc)
            return None
        self._last_error = ""
        return unusable

    async def _to_spool(self, batch: _Batch) -> bool:
        assert self._spool is not None
        spool = self._spool

        def append() -> None:
            spool.append(batch.token, batch.rows(), order=batch.order)

        try:
            await self._on_spool(append)
        except Exception as exc:
            self._note_error("spool append", exc)
            return False
        self._spooled += len(batch.rows())
        self._dropped += batch.unusable
        return True

    async def _spill_overflow(self) -> None:
        """Past max_queue, spool the excess now rather than wait for a slow store call to return."""
        queue, size = self._queue, self.settings.batch_size
        assert self._spool is not None
        while len(queue) > self.settings.max_queue:
            records = [queue.popleft()[1] for _ in range(min(size, len(queue)))]
            order = self._spool.next_order()
            batch = _Batch(order, f"{order}-{uuid.uuid4().hex}", records)
            if not await self._to_spool(batch):
                self._pending.append(batch)  # later than every pending batch: order holds
                return

    # -- threads ------------------------------------------------------------------------------

    async def _on_store(self, fn: Callable[..., T], *args: Any, spill: bool = False) -> T:
        assert self._store_thread is not None
        future = asyncio.get_running_loop().run_in_executor(self._store_thread, fn, *args)
        if spill:
            while not future.done():
                await asyncio.wait({future}, timeout=_OVERFLOW_CHECK_S)
                if len(self._queue) > self.settings.max_queue:
                    await self._spill_overflow()
        return await future

    async def _on_spool(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._spool_thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._spool_thread, fn, *args)

    # -- helpers ------------------------------------------------------------------------------

    def _back_off(self) -> None:
        """After a failure, wait replay_interval_s before touching the store (or a failing spool) again."""
        self._next_retry = time.monotonic() + self.settings.replay_interval_s

    def _spool_backlog(self) -> int:
        return self._spool.backlog() if self._spool is not None else 0

    def _spool_after_close(self, record: AuditRecord) -> None:
        """A straggler after close(): spool it synchronously (blocking, but only at shutdown)."""
        log.warning("audit record submitted after close(); spooling it directly")
        with Spool(self.settings.spool_dir) as spool:
            order = spool.next_order()
            spool.append(f"{order}-{uuid.uuid4().hex}", [normalize_row(record.to_row())], order=order)
        self._spooled += 1

    def _note_error(self, action: str, exc: BaseException) -> None:
        """Record and log a failure by type and message only: never row contents or credentials."""
        message = self.settings.redact(" ".join(str(exc).split()))[:_ERROR_CHARS]
        self._last_error = f"{action}: {type(exc).__name__}: {message}"
        log.error("audit %s failed: %s: %s", action, type(exc).__name__, message)
