"""Telemetry fixtures: a gateway whose spans arrive as decoded OTLP exports and whose metrics land in
the SDK's in-memory reader.

Spans take the production path — the gateway's tracer provider, its encoder and its batching
thread — and only the last hop differs: instead of an HTTP or gRPC request, the encoded
ExportTraceServiceRequest is decoded in process with the official `opentelemetry-proto` classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.config import GatewayConfig
from gateway.telemetry.setup import Telemetry, build_telemetry
from tests.conftest import RunningGateway
from tests.telemetry.otlp_decoded import DecodedSpan, DecodingSender


@dataclasses.dataclass
class Captured:
    """What a gateway emitted: exported spans (decoded) and a metric reader to collect from."""

    spans: DecodingSender
    metrics: InMemoryMetricReader
    telemetry: list[Telemetry] = dataclasses.field(default_factory=list)

    def finished(self) -> list[DecodedSpan]:
        """Every span ended so far, after flushing the export queue, in export order."""
        for telemetry in self.telemetry:
            if telemetry.tracer_provider is not None:
                assert telemetry.tracer_provider.force_flush(5_000), "span export did not finish"
        return self.spans.spans()

    def span(self, predicate: Callable[[DecodedSpan], bool]) -> DecodedSpan:
        found = [s for s in self.finished() if predicate(s)]
        assert len(found) == 1, f"expected one matching span, got {[s.name for s in found]}"
        return found[0]

    def exported_bytes(self) -> bytes:
        """Everything sent so far, as on the wire (for "this secret never left" checks)."""
        self.finished()
        return b"".join(self.spans.payloads)

    def points(self, name: str) -> list[Any]:
        """All data points of metric `name` (cumulative since start)."""
        data = self.metrics.get_metrics_data()
        out: list[Any] = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(metric.data.data_points)
        return out


@pytest.fixture
def captured() -> Iterator[Captured]:
    yield Captured(DecodingSender(), InMemoryMetricReader())


@pytest.fixture
def in_memory(captured: Captured) -> Callable[[GatewayConfig], Telemetry]:
    """Pass as `make_gateway(with_telemetry=in_memory)`: real providers, spans decoded in process, no OTLP."""

    def build(config: GatewayConfig) -> Telemetry:
        telemetry = build_telemetry(
            config, env={}, span_sender=captured.spans, metric_readers=(captured.metrics,)
        )
        captured.telemetry.append(telemetry)
        return telemetry

    return build


async def traced_gateway(make_gateway: Callable[..., Any], in_memory: Any, **sections: Any) -> RunningGateway:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory, **sections)
    return gw
