"""AuditWriter against a real chDB store: batching, failure, spool, replay, restart, dedup."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit.record import AuditRecord, Usage
from gateway.audit.settings import AuditSettings
from gateway.audit.spool import CORRUPT_DIR, Spool
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditUnavailable, AuditWriter
from tests.audit.support import Faults, make_record, stored_rows, wait_until

Factory = Callable[[AuditSettings], AuditStore]


def sample(count: int, first: int = 0) -> list[AuditRecord]:
    records = [make_record(i) for i in range(first, first + count)]
    # Every variant the table must keep apart: unknown usage, no findings, empty previews.
    records[0] = make_record(first, usage=Usage(), findings=(), ttfb_ms=None, request_preview="")
    return records


def read_back(settings: AuditSettings) -> list[AuditRecord]:
    return [AuditRecord.from_row(row) for row in stored_rows(settings)]


def spooled_rows(settings: AuditSettings) -> int:
    with Spool(settings.spool_dir) as spool:
        return spool.backlog()


async def test_submitted_records_land_once_each_with_every_value(settings: AuditSettings) -> None:
    records = sample(120)  # more than two batches of 50
    writer = AuditWriter(settings)
    await writer.start()
    assert writer.ready
    for record in records:
        writer.submit(record)
    await writer.close()

    assert read_back(settings) == records
    stats = writer.stats
    assert (stats.written, stats.spooled, stats.dropped, stats.queued) == (120, 0, 0, 0)


async def test_batches_flush_by_size_and_by_age(settings: AuditSettings) -> None:
    slow = dataclasses.replace(settings, flush_interval_s=0.3)
    writer = AuditWriter(slow)
    await writer.start()
    try:
        for record in sample(50):  # exactly one full batch: goes at once
            writer.submit(record)
        await wait_until(lambda: writer.stats.written == 50, within_s=0.25)
        writer.submit(make_record(50))  # a partial batch waits for flush_interval_s
        await asyncio.sleep(0.05)
        assert writer.stats.written == 50 and writer.stats.queued == 1
        await wait_until(lambda: writer.stats.written == 51, within_s=2)
        rows = await writer.query(f"SELECT count() AS n FROM {slow.qualified_table}")
        assert rows == [{"n": 51}]
    finally:
        await writer.close()


async def test_failed_store_spools_then_replays_in_order(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory
) -> None:
    writer = AuditWriter(settings, store_factory=faulty_factory)
    await writer.start()
    try:
        faults.fail_inserts = True
        first = sample(80)
        for record in first:
            writer.submit(record)
        await writer.flush()
        assert writer.stats.spooled == 80 and writer.stats.spool_backlog == 80
        assert "audit sink down" in writer.stats.last_error

        second = sample(30, first=80)  # while the spool holds rows, new ones queue behind them
        for record in second:
            writer.submit(record)
        await wait_until(lambda: writer.stats.spool_backlog == 110)

        faults.fail_inserts = False
        await wait_until(lambda: writer.stats.spool_backlog == 0 and writer.stats.queued == 0)
        stats = writer.stats
        assert (stats.replayed, stats.written, stats.dropped, stats.last_error) == (110, 0, 0, "")
    finally:
        await writer.close()
    assert read_back(settings) == first + second


async def test_records_survive_a_restart_while_the_store_is_down(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory
) -> None:
    faults.fail_inserts = True
    writer = AuditWriter(settings, store_factory=faulty_factory)
    await writer.start()
    records = sample(75)
    for record in records:
        writer.submit(record)
    await writer.close()  # nothing got in: all of it ends in the spool
    assert writer.stats.dropped == 0
    assert spooled_rows(settings) == 75
    assert stored_rows(settings) == []

    restarted = AuditWriter(settings)  # healthy store, same spool
    await restarted.start()
    await wait_until(lambda: restarted.stats.spool_backlog == 0)
    await restarted.close()
    assert restarted.stats.replayed == 75
    assert read_back(settings) == records


async def test_a_batch_that_landed_but_looked_failed_is_not_doubled(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory
) -> None:
    faults.land_then_fail = 1
    writer = AuditWriter(settings, store_factory=faulty_factory)
    await writer.start()
    records = sample(40)
    for record in records:
        writer.submit(record)
    await writer.flush()  # insert lands, then raises: the writer spools the batch...
    assert writer.stats.spooled == 40
    await writer.flush()  # ...and replays it with the same token
    await writer.close()
    assert faults.inserts == [40, 40]  # really inserted twice
    assert writer.stats.replayed == 40
    assert read_back(settings) == records  # but stored once


async def test_store_down_at_startup_is_retried(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory
) -> None:
    faults.fail_open = True
    writer = AuditWriter(settings, store_factory=faulty_factory)
    await writer.start()  # serving goes on without the store
    try:
        assert not writer.ready
        with pytest.raises(AuditUnavailable):
            await writer.query("SELECT 1")
        records = sample(20)
        for record in records:
            writer.submit(record)
        await wait_until(lambda: writer.stats.spool_backlog == 20)
        faults.fail_open = False
        await wait_until(lambda: writer.ready and writer.stats.spool_backlog == 0)
    finally:
        await writer.close()
    assert read_back(settings) == records


async def test_corrupt_spool_file_is_moved_aside_at_startup(settings: AuditSettings, caplog) -> None:
    with Spool(settings.spool_dir) as spool:
        spool.append("left-over", [make_record(1).to_row()])
    bad = Path(settings.spool_dir) / "00000000000000000001.batch"
    bad.write_bytes(b'{"format": "llm-gateway-audit-spool", "version": 1, "token": "t", "rows": 2}\n{"ts"')

    writer = AuditWriter(settings)
    with caplog.at_level(logging.ERROR):
        await writer.start()
        await wait_until(lambda: writer.stats.spool_backlog == 0)
    await writer.close()
    assert writer.stats.spool_corrupt == 1
    assert (Path(settings.spool_dir) / CORRUPT_DIR / bad.name).exists()
    assert [r.request_id for r in read_back(settings)] == ["req-000001"]


async def test_overflow_is_spooled_while_an_insert_hangs(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory
) -> None:
    tight = dataclasses.replace(settings, batch_size=10, max_queue=25)
    writer = AuditWriter(tight, store_factory=faulty_factory)
    await writer.start()
    faults.insert_delay_s = 0.5
    first, rest = sample(10), sample(90, first=10)
    try:
        for record in first:  # a full batch: its insert starts and hangs
            writer.submit(record)
        await asyncio.sleep(0.1)
        for record in rest:
            writer.submit(record)
        # in memory: the batch in flight + at most max_queue; the rest is on disk before the insert returns
        await wait_until(lambda: writer.stats.queued <= 10 + 25 and writer.stats.spooled > 0, within_s=0.3)
        assert faults.inserts == []
    finally:
        faults.insert_delay_s = 0
        await writer.close()
    assert writer.stats.dropped == 0
    # what was spooled waits for the next start; replay it and check the order end to end
    restarted = AuditWriter(tight)
    await restarted.start()
    await wait_until(lambda: restarted.stats.spool_backlog == 0)
    await restarted.close()
    assert read_back(settings) == first + rest


async def test_submit_is_cheap_and_never_raises(settings: AuditSettings) -> None:
    writer = AuditWriter(dataclasses.replace(settings, batch_size=5000))
    record = make_record(1)
    started = time.perf_counter()
    for _ in range(5_000):
        writer.submit(record)  # before start(): queued, not lost
    per_call = (time.perf_counter() - started) / 5_000
    assert per_call < 50e-6
    writer.submit("not a record")  # type: ignore[arg-type]
    await writer.start()
    await writer.close()
    assert writer.stats.written == 5_000
    assert writer.stats.dropped == 1  # the one object that cannot become a row, and is counted


async def test_logs_never_carry_row_contents(
    settings: AuditSettings, faults: Faults, faulty_factory: Factory, caplog
) -> None:
    secret = "sk-proj-THISMUSTNOTLEAK"
    faults.fail_inserts = True
    writer = AuditWriter(settings, store_factory=faulty_factory)
    with caplog.at_level(logging.DEBUG, logger="gateway.audit"):
        await writer.start()
        writer.submit(make_record(1, request_preview=secret, error_message=secret))
        await writer.flush()
        await writer.close()
    assert "audit sink down" in caplog.text
    assert secret not in caplog.text and secret not in writer.stats.last_error


async def test_password_is_scrubbed_from_errors(tmp_path: Path) -> None:
    settings = AuditSettings(
        dsn="http://writer:hunter2-pw@127.0.0.1:9/audit",
        spool_dir=str(tmp_path / "spool"),
        flush_interval_s=0.02,
        replay_interval_s=60,
    )

    class Refusing(AuditStore):
        def open(self) -> None:
            raise ConnectionError(f"cannot reach {self.settings.dsn}")

    writer = AuditWriter(settings, store_factory=Refusing)
    await writer.start()
    writer.submit(make_record(1))
    await writer.close()
    assert "hunter2-pw" not in writer.stats.last_error
    assert "***" in writer.stats.last_error
    assert spooled_rows(settings) == 1


async def test_submit_after_close_still_spools(settings: AuditSettings) -> None:
    writer = AuditWriter(settings)
    await writer.start()
    await writer.close()
    writer.submit(make_record(1))
    assert writer.stats.dropped == 0
    assert spooled_rows(settings) == 1


async def test_rows_spooled_by_another_version_still_replay(settings: AuditSettings) -> None:
    older = make_record(1).to_row()
    del older["reasoning_tokens"], older["finding_actions"]  # columns it did not know yet
    older["retired_column"] = "x"  # a column since dropped
    older["status"] = 99_999  # out of range for UInt16
    with Spool(settings.spool_dir) as spool:
        spool.append("older-version", [older])
    writer = AuditWriter(settings)
    await writer.start()
    await wait_until(lambda: writer.stats.spool_backlog == 0)
    await writer.close()
    [row] = stored_rows(settings)
    assert (row["request_id"], row["reasoning_tokens"], row["status"]) == ("req-000001", None, 65535)
