"""The audit store in a child process: round trip, a killed child, a dead parent, a clean close."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.audit.process import AuditStoreProcessError, ProcessStore
from gateway.audit.record import AuditRecord, Outcome, Usage
from gateway.audit.schema import normalize_row
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter
from tests.audit.support import make_record, stored_rows, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def process_settings(settings: AuditSettings) -> AuditSettings:
    return dataclasses.replace(settings, isolation="process")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_round_trip_through_the_child_and_a_clean_close(process_settings: AuditSettings) -> None:
    store = ProcessStore(process_settings)
    store.open()
    pid = store.pid
    assert pid is not None and pid != os.getpid()
    rows = [normalize_row(make_record(i).to_row()) for i in range(5)]
    store.insert(rows, "token-1")
    store.insert(rows, "token-1")  # same dedup token: not doubled
    found = store.query(f"SELECT request_id FROM {process_settings.qualified_table} ORDER BY request_id", {})
    assert [r["request_id"] for r in found] == [f"req-{i:06d}" for i in range(5)]
    with pytest.raises(AuditStoreProcessError, match=r"UNKNOWN_(TABLE|DATABASE)"):
        store.query("SELECT * FROM nowhere.nothing", {})
    assert store.is_open  # an error in one operation leaves the child serving
    store.close()
    assert not store.is_open and not alive(pid)
    # The chDB directory is free again for this process.
    direct = AuditStore(process_settings)
    direct.open()
    direct.close()


async def test_a_killed_child_spools_and_every_record_lands_once(process_settings: AuditSettings) -> None:
    writer = AuditWriter(process_settings)
    await writer.start()
    records = [make_record(i) for i in range(300)]
    for record in records[:100]:
        writer.submit(record)
    await writer.flush()
    store = writer._store
    assert isinstance(store, ProcessStore) and store.pid is not None
    os.kill(store.pid, signal.SIGKILL)
    for record in records[100:]:
        writer.submit(record)
    # The next insert finds the child gone: spooled, then a new child is started and replays.
    await wait_until(lambda: writer.stats.spooled > 0, within_s=30)
    await wait_until(lambda: writer.stats.spool_backlog == 0 and writer.ready, within_s=60)
    await writer.close()
    stats = writer.stats
    assert stats.dropped == 0 and stats.written + stats.replayed == 300
    assert [AuditRecord.from_row(r) for r in stored_rows(process_settings)] == records


def test_the_child_exits_when_the_gateway_dies(process_settings: AuditSettings, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, os, dataclasses\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from gateway.audit.settings import AuditSettings\n"
        "from gateway.audit.process import ProcessStore\n"
        "if __name__ == '__main__':  # spawn re-imports this file in the child\n"
        f"    settings = AuditSettings(dsn={process_settings.dsn!r}, spool_dir={str(tmp_path)!r})\n"
        "    store = ProcessStore(settings)\n"
        "    store.open()\n"
        "    print(store.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(child):
        assert time.monotonic() < deadline, "the audit store process outlived its gateway"
        time.sleep(0.2)
    store = AuditStore(process_settings)  # the directory lock went with it
    store.open()
    store.close()


@pytest.mark.parametrize(
    "record",
    [
        make_record(1),
        make_record(2, usage=Usage(), findings=(), ttfb_ms=None, request_preview=""),
        make_record(3, outcome=Outcome.CLIENT_DISCONNECTED, stream=True, error_type="client_disconnected"),
    ],
)
def test_records_cross_to_the_store_process_unchanged(record: AuditRecord) -> None:
    wire = pickle.loads(pickle.dumps(record.to_wire()))
    assert AuditRecord.from_wire(wire) == record
