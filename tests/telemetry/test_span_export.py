"""Batching of encoded spans: batch sizes, the queue bound, flush, shutdown, a failing sender."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.telemetry import otlp_encoding as otlp
from gateway.telemetry.span_export import BatchSettings, BatchSpanExporter


class Recorder:
    """A sender that decodes each batch and can be made to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[ExportTraceServiceRequest] = []
        self.fail = fail
        self.closed = False

    def send(self, payload: bytes, timeout_s: float) -> bool:
        self.batches.append(ExportTraceServiceRequest.FromString(payload))
        if self.fail:
            raise ConnectionError("collector down")
        return True

    def shutdown(self) -> None:
        self.closed = True

    def sizes(self) -> list[int]:
        return [sum(len(ss.spans) for rs in b.resource_spans for ss in rs.scope_spans) for b in self.batches]


def span(n: int) -> bytes:
    name = otlp.AttributeEncoder().name(f"span-{n}")
    return otlp.span_message([otlp.span_prefix(n + 1, n + 1, "", 0), name, otlp.span_times(1, 2)])


def exporter(sender: Recorder, **settings: float) -> BatchSpanExporter:
    defaults = {"schedule_delay_s": 60.0, "max_queue_size": 100, "max_batch_size": 10}
    return BatchSpanExporter(
        sender,
        otlp.resource(otlp.AttributeEncoder(), {"service.name": "t"}),
        BatchSettings(**{**defaults, **settings}),
    )  # type: ignore[arg-type]


def test_full_batches_go_out_without_waiting_and_the_rest_on_flush() -> None:
    sender = Recorder()
    batches = exporter(sender)
    scope = batches.add_scope(otlp.scope("s", None, None), "")
    for n in range(25):
        batches.enqueue(scope, span(n))
    assert batches.flush(5)
    assert sorted(sender.sizes(), reverse=True) == [10, 10, 5]
    names = [
        s.name for b in sender.batches for rs in b.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    assert names == [f"span-{n}" for n in range(25)]  # in order
    batches.shutdown()
    assert sender.closed


def test_spans_are_grouped_by_scope_in_one_request() -> None:
    sender = Recorder()
    batches = exporter(sender)
    first, second = (
        batches.add_scope(otlp.scope("a", "1", None), ""),
        batches.add_scope(otlp.scope("b", None, None), ""),
    )
    for n in range(4):
        batches.enqueue(first if n % 2 else second, span(n))
    assert batches.flush(5)
    (request,) = sender.batches
    (rs,) = request.resource_spans
    assert {ss.scope.name: len(ss.spans) for ss in rs.scope_spans} == {"a": 2, "b": 2}
    batches.shutdown()


def test_a_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    sender = Recorder()
    # Batches larger than the queue and a long delay: the thread never takes anything here.
    batches = exporter(sender, max_queue_size=20, max_batch_size=1000)
    scope = batches.add_scope(otlp.scope("s", None, None), "")
    for n in range(30):
        batches.enqueue(scope, span(n))
    assert batches.dropped == 10 and "dropped" in caplog.text
    assert batches.flush(5) and sender.sizes() == [20]
    batches.shutdown()


def test_a_failing_sender_loses_the_batch_not_the_thread() -> None:
    sender = Recorder(fail=True)
    batches = exporter(sender)
    scope = batches.add_scope(otlp.scope("s", None, None), "")
    batches.enqueue(scope, span(1))
    assert batches.flush(5)
    sender.fail = False
    batches.enqueue(scope, span(2))
    assert batches.flush(5)
    assert sender.sizes() == [1, 1]
    batches.shutdown()


def test_shutdown_sends_what_is_queued_and_refuses_more() -> None:
    sender = Recorder()
    batches = exporter(sender)
    scope = batches.add_scope(otlp.scope("s", None, None), "")
    batches.enqueue(scope, span(1))
    batches.shutdown()
    assert sender.sizes() == [1]
    batches.enqueue(scope, span(2))
    assert batches.dropped == 1 and batches.flush(1)


def test_settings_from_the_environment() -> None:
    settings = BatchSettings.from_env(
        {
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_QUEUE_SIZE": "50",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "80",
        }
    )
    assert settings == BatchSettings(
        schedule_delay_s=0.1, export_timeout_s=30.0, max_queue_size=50, max_batch_size=50
    )
    assert BatchSettings.from_env({"OTEL_BSP_SCHEDULE_DELAY": "soon"}) == BatchSettings()
