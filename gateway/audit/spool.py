"""Append-only on-disk spool of audit batches waiting for the store; replayed oldest first.

One file per batch, named by a sortable order key (`<time in ns, forced strictly increasing>.batch`).
A file is written under a temporary name, fsync'd, then renamed, so a batch is either wholly in
the spool or absent. Format: orjson lines; the first line is a header with the batch's
deduplication token and row count, then one row per line. Datetimes are tagged so they come
back as the same datetime (naive or aware, to the microsecond).

Blocking file I/O throughout: the writer calls it from its own thread.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import orjson

log = logging.getLogger(__name__)

FORMAT = "llm-gateway-audit-spool"
VERSION = 1
SUFFIX = ".batch"
TMP_SUFFIX = ".tmp"
CORRUPT_DIR = "corrupt"
_DATETIME_TAG = "$datetime"


class SpoolLocked(RuntimeError):
    """Another process (or another Spool in this one) owns the spool directory."""


class CorruptBatch(ValueError):
    """A spool file that cannot be read back as the batch it was meant to hold."""


class SpooledBatch(NamedTuple):
    """One batch read back from the spool."""

    path: Path
    token: str
    rows: list[dict[str, Any]]


def _tag_datetime(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {_DATETIME_TAG: value.isoformat()}
    if isinstance(value, Decimal):
        return str(value)  # exact; the column's coercion turns it back into a Decimal
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def encode_batch(token: str, rows: Sequence[dict[str, Any]]) -> bytes:
    """The bytes of one spool file."""
    header = {"format": FORMAT, "version": VERSION, "token": token, "rows": len(rows)}
    lines = [orjson.dumps(header)]
    lines.extend(
        orjson.dumps(row, default=_tag_datetime, option=orjson.OPT_PASSTHROUGH_DATETIME) for row in rows
    )
    return b"\n".join(lines) + b"\n"


def _untag(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if type(value) is dict and len(value) == 1 and _DATETIME_TAG in value:
            row[key] = dt.datetime.fromisoformat(value[_DATETIME_TAG])
    return row


def _read_header(line: bytes) -> tuple[str, int]:
    header = orjson.loads(line)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptBatch("not a spool file")
    if header.get("version") != VERSION:
        raise CorruptBatch(f"unknown spool format version {header.get('version')!r}")
    token, count = header.get("token"), header.get("rows")
    if not isinstance(token, str) or not token or not isinstance(count, int) or count < 0:
        raise CorruptBatch("bad header")
    return token, count


def decode_batch(data: bytes) -> tuple[str, list[dict[str, Any]]]:
    """(token, rows) from the bytes of a spool file; CorruptBatch if incomplete or unreadable."""
    if not data.endswith(b"\n"):
        raise CorruptBatch("truncated (no final newline)")
    lines = data[:-1].split(b"\n")
    try:
        token, count = _read_header(lines[0])
        rows = [orjson.loads(line) for line in lines[1:]]
    except orjson.JSONDecodeError as exc:
        raise CorruptBatch(f"invalid JSON at {exc.pos}") from None
    if len(rows) != count:
        raise CorruptBatch(f"holds {len(rows)} rows, header says {count}")
    if not all(isinstance(row, dict) for row in rows):
        raise CorruptBatch("a row is not an object")
    return token, [_untag(row) for row in rows]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool directory: append batches, read the oldest, remove it once stored.

    Holds an exclusive lock on the directory until `close()`, so two gateways never replay
    the same files. Thread-safe, though the writer uses it from one thread.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.corrupt_directory = self.directory / CORRUPT_DIR
        self.corrupt_directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lock_file = open(self.directory / ".lock", "a+b")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLocked(f"audit spool {self.directory} is in use by another process") from None
        self._names: list[str] = []  # sorted file names of complete batches
        self._rows: dict[str, int] = {}
        self._backlog = 0
        self._last_ns = 0
        self.corrupt_count = sum(1 for p in self.corrupt_directory.iterdir() if p.is_file())
        self._recover_temporary_files()
        self._index()

    def close(self) -> None:
        """Release the directory lock."""
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_order(self) -> str:
        """A sort key greater than any before it, also across restarts: the wall clock in ns, forced up."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return f"{self._last_ns:020d}"

    def append(self, token: str, rows: Sequence[dict[str, Any]], *, order: str | None = None) -> Path:
        """Durably add a batch; `order` (from next_order) places it among the others, default: last."""
        name = (order or self.next_order()) + SUFFIX
        path = self.directory / name
        temporary = self.directory / f".{name}{TMP_SUFFIX}"
        data = encode_batch(token, rows)
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        with self._lock:
            if name not in self._rows:
                bisect.insort(self._names, name)
                self._backlog += len(rows)
                self._rows[name] = len(rows)
        return path

    def oldest(self) -> SpooledBatch | None:
        """The oldest readable batch, or None when empty; unreadable files are moved to corrupt/."""
        while True:
            with self._lock:
                if not self._names:
                    return None
                name = self._names[0]
            path = self.directory / name
            try:
                token, rows = decode_batch(path.read_bytes())
            except (CorruptBatch, OSError) as exc:
                self._quarantine(path, str(exc))
                continue
            return SpooledBatch(path, token, rows)

    def remove(self, path: Path) -> None:
        """Forget a batch once the store holds it."""
        path.unlink(missing_ok=True)
        self._forget(path.name)

    def backlog(self) -> int:
        """Rows waiting in the spool (not batches; see `batches()`)."""
        return self._backlog

    def batches(self) -> int:
        """Batch files waiting in the spool."""
        return len(self._names)

    def _forget(self, name: str) -> None:
        with self._lock:
            count = self._rows.pop(name, None)
            if count is not None:
                self._backlog -= count
                self._names.remove(name)

    def _quarantine(self, path: Path, reason: str) -> None:
        target = self.corrupt_directory / path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        self._forget(path.name)
        self.corrupt_count += 1
        # Names the file and the reason only: its contents may hold prompts.
        log.error(
            "AUDIT SPOOL: unreadable batch %s moved to %s (%s); its rows are NOT in the audit table",
            path.name,
            self.corrupt_directory,
            reason,
        )

    def _recover_temporary_files(self) -> None:
        """A crash between fsync and rename leaves a complete temp file: keep it if it reads back."""
        for temporary in sorted(self.directory.glob(f".*{SUFFIX}{TMP_SUFFIX}")):
            name = temporary.name[1 : -len(TMP_SUFFIX)]
            try:
                decode_batch(temporary.read_bytes())
            except (CorruptBatch, OSError) as exc:
                # Cut short by a crash while the rows were still only in memory.
                self._quarantine(temporary, f"incomplete write: {exc}")
                continue
            os.replace(temporary, self.directory / name)

    def _index(self) -> None:
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                with open(path, "rb") as file:
                    _, count = _read_header(file.readline())
            except (CorruptBatch, orjson.JSONDecodeError, OSError) as exc:
                self._quarantine(path, str(exc))
                continue
            self._names.append(path.name)
            self._rows[path.name] = count
            self._backlog += count
            stem = path.name.removesuffix(SUFFIX)
            if stem.isdigit():
                self._last_ns = max(self._last_ns, int(stem))
