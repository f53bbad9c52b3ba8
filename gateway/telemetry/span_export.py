"""Encoded spans queued and sent in batches from one background thread (the `OTEL_BSP_*` settings).

The request path only appends bytes to a deque; the thread wakes when a batch is full or the
schedule delay has passed, wraps the spans in one ExportTraceServiceRequest and hands it to the
sender. A full queue drops spans (counted and logged) rather than grow without bound.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.telemetry import otlp_encoding as otlp

log = logging.getLogger(__name__)


class SpanSender(Protocol):
    """Delivers one encoded ExportTraceServiceRequest (OTLP/HTTP, OTLP/gRPC, or a test's decoder)."""

    def send(self, payload: bytes, timeout_s: float) -> bool: ...

    def shutdown(self) -> None: ...


def _millis(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        log.warning("%s=%s is not a whole, non-negative number; using %d", name, raw, default)
        return default
    return value


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Batching, as the SDK's BatchSpanProcessor reads it from the environment."""

    schedule_delay_s: float = 5.0
    export_timeout_s: float = 30.0
    max_queue_size: int = 2048
    max_batch_size: int = 512

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchSettings:
        queue = max(_millis(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048), 1)
        batch = min(max(_millis(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), 1), queue)
        return cls(
            schedule_delay_s=_millis(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
            export_timeout_s=_millis(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000,
            max_queue_size=queue,
            max_batch_size=batch,
        )


class BatchSpanExporter:
    """Queue of encoded spans by instrumentation scope, exported in batches by a daemon thread."""

    def __init__(self, sender: SpanSender, resource_body: bytes, settings: BatchSettings) -> None:
        self._sender = sender
        self._resource = resource_body
        self._settings = settings
        self._scopes: list[tuple[bytes, str]] = []
        self._queue: deque[tuple[int, bytes]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._requested = self._completed = 0  # flush requests, and those the thread has served
        self._stopping = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="otlp-spans", daemon=True)
        self._thread.start()

    def add_scope(self, scope_body: bytes, schema_url: str) -> int:
        """Register an InstrumentationScope; spans are queued under the index returned."""
        with self._idle:
            self._scopes.append((scope_body, schema_url))
            return len(self._scopes) - 1

    def enqueue(self, scope_index: int, span: bytes) -> None:
        """Called when a span ends, from any thread: a deque append, and a wake-up per full batch."""
        queue = self._queue
        if len(queue) >= self._settings.max_queue_size or self._stopping:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("span queue full or closed: %d spans dropped so far", self.dropped)
            return
        queue.append((scope_index, span))
        if len(queue) >= self._settings.max_batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued so far; True when the thread finished within `timeout_s`."""
        if self._stopping:
            return not self._queue
        with self._idle:
            self._requested += 1
            ticket = self._requested
            self._wake.set()
            return self._idle.wait_for(lambda: self._completed >= ticket, timeout_s)

    def shutdown(self) -> None:
        """Send what is queued, stop the thread, close the sender (blocks up to the export timeout)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(self._settings.export_timeout_s + 1)
        self._sender.shutdown()

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self._settings.schedule_delay_s)
            self._wake.clear()
            with self._idle:
                ticket = self._requested
                flushing = ticket > self._completed or self._stopping
            # Full batches when woken; the rest too when the delay passed or a flush asked for it.
            self._export(everything=flushing or not woken)
            with self._idle:
                self._completed = ticket
                self._idle.notify_all()
            if self._stopping:
                self._export(everything=True)
                return

    def _export(self, everything: bool) -> None:
        size = self._settings.max_batch_size
        while len(self._queue) >= size or (everything and self._queue):
            batch: dict[int, list[bytes]] = {}
            for _ in range(min(len(self._queue), size)):
                scope_index, span = self._queue.popleft()
                batch.setdefault(scope_index, []).append(span)
            scopes = [(*self._scopes[index], spans) for index, spans in batch.items()]
            payload = otlp.export_request(self._resource, scopes)
            try:
                sent = self._sender.send(payload, self._settings.export_timeout_s)
            except Exception:
                log.exception("span export failed")
                sent = False
            if not sent:
                log.warning("%d spans not exported", sum(len(s) for s in batch.values()))
