"""Helpers for the audit tests: sample records, a fault injector around the real store, polling."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.record import AuditRecord, Finding, Outcome, Usage
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore

# Recent, so payload TTLs (30 days by default) do not expire the sample rows.
BASE_TS = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)


def make_record(i: int, **changes: Any) -> AuditRecord:
    """A record with every field set; ts is i ms after BASE_TS (the table keeps milliseconds)."""
    fields: dict[str, Any] = dict(
        ts=BASE_TS + dt.timedelta(milliseconds=i),
        request_id=f"req-{i:06d}",
        provider="openai",
        provider_kind="openai",
        method="POST",
        endpoint="/v1/chat/completions",
        operation="chat",
        outcome=Outcome.OK,
        status=200,
        duration_ms=12.5 + i,
        trace_id=f"{i:032x}",
        span_id=f"{i:016x}",
        requested_model="gpt-4o-mini",
        response_model="gpt-4o-mini-2024-07-18",
        response_id=f"chatcmpl-{i}",
        stream=i % 2 == 0,
        ttfb_ms=3.25,
        request_bytes=100 + i,
        response_bytes=2000 + i,
        request_sha256="a" * 64,
        response_sha256="b" * 64,
        usage=Usage(input_tokens=10 + i, output_tokens=5, cache_read_tokens=0),
        finish_reason="stop",
        request_preview=f"Привет, 世界 🎉 #{i}",
        response_preview='{"role": "assistant", "content": "ok"}',
        findings=(
            Finding("aws_key", "secret", "high", "request.messages[0]", "redact"),
            Finding("email", "pii", "low", "response"),
        ),
        key_id="key-1",
        user="alice@example.com",
        team="research",
        client_address="127.0.0.1",
        user_agent="openai-python/1.40",
    )
    fields.update(changes)
    return AuditRecord(**fields)


def stored_rows(settings: AuditSettings, where: str = "") -> list[dict[str, Any]]:
    """All rows of the audit table in ts order, read with a fresh store (the writer must be closed)."""
    reader = AuditStore(settings)
    reader.open()
    try:
        return reader.query(f"SELECT * FROM {settings.qualified_table} {where} ORDER BY ts, request_id")
    finally:
        reader.close()


@dataclass
class Faults:
    """Switches a test flips while the writer runs; read from the store thread."""

    fail_open: bool = False
    fail_inserts: bool = False
    land_then_fail: int = 0  # the next N inserts reach the table, then raise anyway
    insert_delay_s: float = 0.0
    inserts: list[int] = field(default_factory=list)  # batch sizes of inserts that landed
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultyStore(AuditStore):
    """The real store, except that open/insert raise while a fault is switched on."""

    def __init__(self, settings: AuditSettings, faults: Faults) -> None:
        super().__init__(settings)
        self.faults = faults

    def open(self) -> None:
        if self.faults.fail_open:
            raise ConnectionRefusedError("audit sink unreachable (injected)")
        super().open()

    def insert(self, rows: Any, token: str) -> None:
        faults = self.faults
        if faults.insert_delay_s:
            threading.Event().wait(faults.insert_delay_s)
        if faults.fail_inserts:
            raise ConnectionResetError("audit sink down (injected)")
        super().insert(rows, token)
        with faults.lock:
            faults.inserts.append(len(rows))
            if faults.land_then_fail:
                faults.land_then_fail -= 1
                raise TimeoutError("no answer from audit sink (injected, after the insert landed)")


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll until condition() holds (the writer works in the background)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)
