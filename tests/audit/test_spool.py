"""The on-disk spool: order, exact round trip, crash safety, corrupt files."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.schema import normalize_row
from gateway.audit.spool import CORRUPT_DIR, Spool, SpoolLocked, encode_batch
from tests.audit.support import make_record


def rows(first: int, count: int) -> list[dict[str, Any]]:
    return [normalize_row(make_record(i).to_row()) for i in range(first, first + count)]


def test_batches_come_back_oldest_first_and_leave_when_removed(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append("t1", rows(0, 3))
        spool.append("t2", rows(3, 2))
        assert (spool.backlog(), spool.batches()) == (5, 2)

        first = spool.oldest()
        assert first is not None and first.token == "t1"
        assert [r["request_id"] for r in first.rows] == ["req-000000", "req-000001", "req-000002"]
        spool.remove(first.path)
        assert (spool.backlog(), spool.batches()) == (2, 1)

        second = spool.oldest()
        assert second is not None and second.token == "t2"
        spool.remove(second.path)
        assert spool.oldest() is None and spool.backlog() == 0


def test_rows_round_trip_exactly(tmp_path: Path) -> None:
    aware = dt.datetime(2026, 5, 1, 10, 11, 12, 345678, tzinfo=dt.UTC)
    naive = dt.datetime(2026, 5, 1, 10, 11, 12, 1)
    original: list[dict[str, Any]] = [
        {**rows(0, 1)[0], "ts": aware},
        {"ts": naive, "n": None, "f": 1.5, "tags": ["a", "ü"], "text": '日本語 🎉\n{"x": 1}', "b": True},
    ]
    with Spool(tmp_path) as spool:
        spool.append("tok", original)
        batch = spool.oldest()
    assert batch is not None
    assert batch.rows == original
    assert batch.rows[0]["ts"].tzinfo is not None and batch.rows[1]["ts"].tzinfo is None


def test_an_order_key_places_a_late_batch_before_later_ones(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        early = spool.next_order()
        spool.append("later", rows(1, 1))
        spool.append("earlier", rows(0, 1), order=early)
        batch = spool.oldest()
    assert batch is not None and batch.token == "earlier"


def test_spool_survives_reopening_and_keeps_ordering(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append("old", rows(0, 4))
        last = spool.next_order()
    with Spool(tmp_path) as spool:
        assert (spool.backlog(), spool.batches()) == (4, 1)
        assert spool.next_order() > last
        spool.append("new", rows(4, 1))
        batch = spool.oldest()
        assert batch is not None and batch.token == "old"


def test_files_are_written_whole_then_renamed(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        path = spool.append("tok", rows(0, 2))
    assert path.suffix == ".batch" and path.parent == tmp_path
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated mid-row
        lambda data: data[:-1],  # last newline missing
        lambda data: b"\x00\x01garbage\n",
        lambda data: data.split(b"\n", 1)[0] + b"\n",  # header promises rows that are not there
        lambda data: b"",
    ],
)
def test_a_corrupt_file_is_moved_aside_and_replay_goes_on(tmp_path: Path, damage, caplog) -> None:
    with Spool(tmp_path) as spool:
        bad = spool.append("bad", rows(0, 3))
        spool.append("good", rows(3, 1))
    bad.write_bytes(damage(bad.read_bytes()))

    with caplog.at_level(logging.ERROR), Spool(tmp_path) as spool:
        batch = spool.oldest()
        assert batch is not None and batch.token == "good"
        assert spool.corrupt_count == 1
        assert spool.backlog() == 1
    assert (tmp_path / CORRUPT_DIR / bad.name).exists()
    assert not bad.exists()
    assert "moved to" in caplog.text
    assert "req-" not in caplog.text  # names the file, never its contents


def test_corrupt_count_includes_files_already_set_aside(tmp_path: Path) -> None:
    (tmp_path / CORRUPT_DIR).mkdir(parents=True)
    (tmp_path / CORRUPT_DIR / "00000000000000000001.batch").write_bytes(b"x")
    with Spool(tmp_path) as spool:
        assert spool.corrupt_count == 1


def test_a_complete_temp_file_left_by_a_crash_is_recovered(tmp_path: Path) -> None:
    (tmp_path / ".00000000000000000005.batch.tmp").write_bytes(encode_batch("crashed", rows(0, 2)))
    (tmp_path / ".00000000000000000006.batch.tmp").write_bytes(encode_batch("cut", rows(2, 2))[:-10])
    with Spool(tmp_path) as spool:
        batch = spool.oldest()
        assert batch is not None and batch.token == "crashed"
        assert spool.backlog() == 2 and spool.corrupt_count == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolLocked):
        Spool(tmp_path)
    Spool(tmp_path).close()  # released on close
