"""The audit store in a child process: round trip, a killed or hung child, a dead parent, a clean close."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.process import AuditStoreProcessError, ProcessStore
from gateway.audit.record import AuditRecord, Outcome, Usage
from gateway.audit.schema import normalize_row
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, AuditStoreClosed
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
    # Below the gateway's CPU priority, so its bursts do not take a core from the event loop.
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
    rows = [normalize_row(make_record(i).to_row()) for i in range(5)]
    store.insert(rows, "token-1")
    store.insert(rows, "token-1")  # same dedup token: not doubled
    records = [make_record(i) for i in range(5, 205)]  # several parts on the pipe
    assert store.insert_records([*records, "not a record"], "token-2") == 1
    older = make_record(205).to_row()
    del older["finding_actions"]  # as spooled by a version without that column
    store.insert_spooled([older], "token-3")
    found = store.query(f"SELECT request_id FROM {process_settings.qualified_table} ORDER BY request_id", {})
    assert [r["request_id"] for r in found] == [f"req-{i:06d}" for i in range(206)]
    assert [AuditRecord.from_row(r) for r in stored_rows_via(store, process_settings, 5, 205)] == records
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


async def test_a_hung_child_is_killed_and_its_batches_land_once_through_the_spool(
    process_settings: AuditSettings,
) -> None:
    writer = AuditWriter(dataclasses.replace(process_settings, process_timeout_s=1.0))
    await writer.start()
    records = [make_record(i) for i in range(300)]
    for record in records[:100]:
        writer.submit(record)
    await writer.flush()
    store = writer._store
    assert isinstance(store, ProcessStore) and store.pid is not None
    hung = store.pid
    os.kill(hung, signal.SIGSTOP)  # alive, holding the chDB lock, answering nothing
    for record in records[100:]:
        writer.submit(record)
    await wait_until(lambda: writer.stats.spooled > 0, within_s=30)
    assert "did not answer" in writer.stats.last_error
    assert not alive(hung)  # killed, so the next child can take the directory
    await wait_until(lambda: writer.stats.spool_backlog == 0 and writer.ready, within_s=60)
    assert store.pid not in (None, hung)
    await writer.close()
    stats = writer.stats
    assert stats.dropped == 0 and stats.written + stats.replayed == 300
    assert [AuditRecord.from_row(r) for r in stored_rows(process_settings)] == records


def test_close_after_the_child_died_does_not_raise(process_settings: AuditSettings) -> None:
    store = ProcessStore(process_settings)
    store.open()
    pid = store.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    store.close()  # nothing to flush: every insert that returned is in the store
    assert not store.is_open and not alive(pid)
    with pytest.raises(AuditStoreClosed):
        store.query("SELECT 1")


def test_errors_cross_with_their_message_but_never_the_password(tmp_path: Path) -> None:
    # The password doubles as the host name here, so the connection error repeats it.
    settings = AuditSettings(dsn="http://writer:localhost@localhost:9/audit", spool_dir=str(tmp_path))
    store = ProcessStore(settings)
    with pytest.raises(AuditStoreProcessError) as failed:
        store.open()
    message = str(failed.value)
    assert "Connection refused" in message and "port=9" in message
    assert "localhost" not in message and "***" in message
    assert not store.is_open and store.pid is None


def parent_script(tmp_path: Path, settings: AuditSettings, ending: str) -> Path:
    """A small gateway stand-in: opens a ProcessStore, inserts 3 records, prints the child's pid,
    then ends as `ending` says."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, os\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from gateway.audit.settings import AuditSettings\n"
        "from gateway.audit.process import ProcessStore\n"
        "from tests.audit.support import make_record\n"
        "if __name__ == '__main__':  # spawn re-imports this file in the child\n"
        f"    settings = AuditSettings(dsn={settings.dsn!r}, spool_dir={str(tmp_path)!r})\n"
        "    store = ProcessStore(settings)\n"
        "    store.open()\n"
        "    store.insert_records([make_record(i) for i in range(3)], 'from-the-parent')\n"
        "    print(store.pid, flush=True)\n"
        f"    {ending}\n"
    )
    return script


def wait_gone(pid: int, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while alive(pid):
        assert time.monotonic() < deadline, "the audit store process outlived its gateway"
        time.sleep(0.1)


def test_the_child_exits_when_the_gateway_dies(process_settings: AuditSettings, tmp_path: Path) -> None:
    script = parent_script(tmp_path, process_settings, "os.kill(os.getpid(), 9)")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    wait_gone(int(done.stdout.split()[0]))
    # The directory lock went with it, and what the child acknowledged is there.
    assert len(stored_rows(process_settings)) == 3


def test_a_store_never_closed_does_not_hold_up_the_gateways_exit(
    process_settings: AuditSettings, tmp_path: Path
) -> None:
    # multiprocessing joins its children at exit; a child that ignores SIGTERM must still go.
    script = parent_script(tmp_path, process_settings, "sys.exit(0)  # without store.close()")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    wait_gone(int(done.stdout.split()[0]), within_s=5)  # already reaped by its parent's exit
    assert len(stored_rows(process_settings)) == 3


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
    assert AuditRecord.row_from_wire(wire) == record.to_row()  # what the child inserts


def stored_rows_via(
    store: ProcessStore, settings: AuditSettings, first: int, end: int
) -> list[dict[str, Any]]:
    """Rows first..end-1 (by request id), read through the child."""
    return store.query(
        f"SELECT * FROM {settings.qualified_table} WHERE request_id >= {{lo:String}} "
        "AND request_id < {hi:String} ORDER BY request_id",
        {"lo": f"req-{first:06d}", "hi": f"req-{end:06d}"},
    )
