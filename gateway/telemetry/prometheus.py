"""Prometheus pull for OTel metrics: a MetricReader rendered by prometheus-client on each scrape.

Names follow the OpenTelemetry → Prometheus compatibility rules, so a Collector's `prometheus`
exporter fed by our OTLP push produces the same series: dots become underscores, the unit is
appended (`_seconds`, `_bytes`; `{annotation}` units add nothing), monotonic sums end in
`_total`. Exemplars (trace id and span id of a sampled request) ride on histogram buckets and
counters; prometheus-client writes them only in the OpenMetrics format, which a scraper asks for
with `Accept: application/openmetrics-text`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import InfoMetricFamily
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.samples import Exemplar as PromExemplar

_UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "KiBy": "kibibytes", "%": "percent"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str, unit: str) -> tuple[str, str]:
    """(metric name without `_total`, unit suffix) under the OTel → Prometheus rules."""
    base = _INVALID.sub("_", name)
    suffix = (
        ""
        if unit.startswith("{")
        else _UNIT_SUFFIXES.get(unit, _INVALID.sub("_", unit) if unit != "1" else "")
    )
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return base, suffix


def label_name(key: str) -> str:
    name = _INVALID.sub("_", key)
    return "_" + name if name[:1].isdigit() else name


def label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ",".join(label_value(v) for v in value)
    return str(value)


def _labels(attributes: Any) -> dict[str, str]:
    return {label_name(k): label_value(v) for k, v in (attributes or {}).items()}


def _exemplar(exemplars: Sequence[Any], low: float, high: float) -> PromExemplar | None:
    """The newest sampled exemplar whose value falls in (low, high]."""
    for ex in reversed(exemplars):
        if ex.trace_id and low < ex.value <= high:
            return PromExemplar(
                {"trace_id": f"{ex.trace_id:032x}", "span_id": f"{ex.span_id:016x}"},
                ex.value,
                ex.time_unix_nano / 1e9,
            )
    return None


class PrometheusReader(MetricReader):
    """Collects from the SDK on demand (each scrape) and renders the exposition format."""

    def __init__(self) -> None:
        super().__init__()  # cumulative temporality for every instrument: what Prometheus expects
        self._lock = threading.Lock()
        self._data: MetricsData | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Families(self))

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._data = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._data = None

    def snapshot(self) -> MetricsData | None:
        """Collect from the SDK now."""
        with self._lock:
            self.collect()
            data, self._data = self._data, None
        return data

    def render(self, accept: str) -> tuple[bytes, str]:
        """The current metrics in the format the scraper asked for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self._registry), content_type


class _Families:
    """The prometheus-client Collector: OTel metrics data → Prometheus metric families."""

    def __init__(self, reader: PrometheusReader) -> None:
        self._reader = reader
        # The SDK hands out each exemplar once; keep the latest per sample so every scrape shows one.
        self._exemplars: dict[tuple[str, frozenset[tuple[str, str]]], PromExemplar] = {}

    def collect(self) -> Iterator[PromMetric]:
        data = self._reader.snapshot()
        if data is None:
            return
        families: dict[str, PromMetric] = {}
        resource: Resource | None = None
        for rm in data.resource_metrics:
            resource = resource or rm.resource
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    _translate(metric, families)
        for family in families.values():
            family.samples = [self._with_exemplar(sample) for sample in family.samples]
        if resource is not None:
            info = InfoMetricFamily("target", "Target metadata")
            info.add_metric([], _labels(resource.attributes))
            yield info
        yield from families.values()

    def _with_exemplar(self, sample: Any) -> Any:
        key = (sample.name, frozenset(sample.labels.items()))
        if sample.exemplar is not None:
            self._exemplars[key] = sample.exemplar
            return sample
        kept = self._exemplars.get(key)
        return sample._replace(exemplar=kept) if kept is not None else sample


def _translate(metric: Metric, families: dict[str, PromMetric]) -> None:
    name, unit = prometheus_name(metric.name, metric.unit or "")
    data = metric.data
    if isinstance(data, Histogram):
        family = families.setdefault(name, PromMetric(name, metric.description or "", "histogram", unit))
        for hp in data.data_points:
            _add_histogram(family, name, hp)
    elif isinstance(data, Sum) and data.is_monotonic:
        if name.endswith("_total"):
            name = name[: -len("_total")]
        family = families.setdefault(name, PromMetric(name, metric.description or "", "counter", unit))
        for np in data.data_points:
            family.add_sample(name + "_total", _labels(np.attributes), np.value, None, _last(np))
    elif isinstance(data, Sum | Gauge):
        family = families.setdefault(name, PromMetric(name, metric.description or "", "gauge", unit))
        for np in data.data_points:
            family.add_sample(name, _labels(np.attributes), np.value)


def _last(point: NumberDataPoint) -> PromExemplar | None:
    return _exemplar(point.exemplars or (), float("-inf"), float("inf"))


def _add_histogram(family: PromMetric, name: str, hp: HistogramDataPoint) -> None:
    labels = _labels(hp.attributes)
    exemplars = hp.exemplars or ()
    cumulative = 0
    low = float("-inf")
    bounds: Iterable[float] = [*hp.explicit_bounds, float("inf")]
    for bound, count in zip(bounds, hp.bucket_counts, strict=False):
        cumulative += count
        le = "+Inf" if bound == float("inf") else _float_label(bound)
        family.add_sample(
            name + "_bucket", {**labels, "le": le}, cumulative, None, _exemplar(exemplars, low, bound)
        )
        low = bound
    family.add_sample(name + "_count", labels, hp.count)
    family.add_sample(name + "_sum", labels, hp.sum)


def _float_label(value: float) -> str:
    return repr(float(value))
