"""OTLP metric push from the same on-demand reader that serves /metrics.

One reader instead of two (Prometheus pull plus a PeriodicExportingMetricReader) halves what
every measurement costs: the SDK aggregates each measurement once per reader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from gateway.telemetry.prometheus import PrometheusReader

log = logging.getLogger(__name__)


def _millis(env: Mapping[str, str], name: str, default: int) -> float:
    try:
        value = int(env.get(name, default))
    except ValueError:
        log.warning("%s is not a whole number of milliseconds; using %d", name, default)
        value = default
    return max(value, 1) / 1000.0


class MetricsPusher:
    """Every `OTEL_METRIC_EXPORT_INTERVAL` ms (default 60 s), collect and export; once more on shutdown."""

    def __init__(self, reader: PrometheusReader, exporter: Any, env: Mapping[str, str]) -> None:
        self._reader = reader
        self._exporter = exporter
        self._interval = _millis(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000)
        self._timeout_ms = _millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000) * 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push()

    def push(self) -> None:
        try:
            data = self._reader.snapshot()
            if data is not None:
                self._exporter.export(data, timeout_millis=self._timeout_ms)
        except Exception:
            log.exception("OTLP metric export failed")

    def shutdown(self) -> None:
        """Stop the timer, push the final values, close the exporter (blocking)."""
        self._stop.set()
        self._thread.join()
        self.push()
        self._exporter.shutdown()
