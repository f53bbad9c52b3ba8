"""Telemetry fixtures: a gateway whose spans and metrics land in the SDK's in-memory exporter/reader."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import GatewayConfig
from gateway.telemetry.setup import Telemetry, build_telemetry
from tests.conftest import RunningGateway


@dataclasses.dataclass
class Captured:
    """What a gateway emitted: finished spans and a metric reader to collect from."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, predicate: Callable[[ReadableSpan], bool]) -> ReadableSpan:
        found = [s for s in self.finished() if predicate(s)]
        assert len(found) == 1, f"expected one matching span, got {[s.name for s in found]}"
        return found[0]

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
    yield Captured(InMemorySpanExporter(), InMemoryMetricReader())


@pytest.fixture
def in_memory(captured: Captured) -> Callable[[GatewayConfig], Telemetry]:
    """Pass as `make_gateway(with_telemetry=in_memory)`: real providers, in-memory exporters, no OTLP."""

    def build(config: GatewayConfig) -> Telemetry:
        return build_telemetry(
            config,
            env={},
            span_processors=(SimpleSpanProcessor(captured.spans),),
            metric_readers=(captured.metrics,),
        )

    return build


async def traced_gateway(make_gateway: Callable[..., Any], in_memory: Any, **sections: Any) -> RunningGateway:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory, **sections)
    return gw
