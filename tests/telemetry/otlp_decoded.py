"""Exported spans decoded with the official OTLP protobuf classes, in a shape tests can assert on."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.trace import SpanKind, StatusCode

from tests.telemetry.otlp_receiver import attributes

_KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    trace_pb2.Span.SPAN_KIND_SERVER: SpanKind.SERVER,
    trace_pb2.Span.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    trace_pb2.Span.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    trace_pb2.Span.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
_STATUS = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}


@dataclass(frozen=True)
class DecodedEvent:
    name: str
    timestamp: int
    attributes: dict[str, Any]
    dropped_attributes: int


@dataclass(frozen=True)
class DecodedSpan:
    """One span as a collector receives it (ids as ints, attributes as a dict, API enums)."""

    name: str
    kind: SpanKind
    trace_id: int
    span_id: int
    parent_span_id: int | None
    flags: int
    trace_state: str
    start_time: int
    end_time: int
    attributes: dict[str, Any]
    dropped_attributes: int
    events: list[DecodedEvent]
    dropped_events: int
    links: list[trace_pb2.Span.Link]
    status_code: StatusCode
    status_message: str
    scope: str
    scope_version: str
    schema_url: str
    resource: dict[str, Any]

    @classmethod
    def of(cls, span: trace_pb2.Span, scope: trace_pb2.ScopeSpans, resource: dict[str, Any]) -> DecodedSpan:
        return cls(
            name=span.name,
            kind=_KINDS[span.kind],
            trace_id=int.from_bytes(span.trace_id, "big"),
            span_id=int.from_bytes(span.span_id, "big"),
            parent_span_id=int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None,
            flags=span.flags,
            trace_state=span.trace_state,
            start_time=span.start_time_unix_nano,
            end_time=span.end_time_unix_nano,
            attributes=attributes(span.attributes),
            dropped_attributes=span.dropped_attributes_count,
            events=[
                DecodedEvent(e.name, e.time_unix_nano, attributes(e.attributes), e.dropped_attributes_count)
                for e in span.events
            ],
            dropped_events=span.dropped_events_count,
            links=list(span.links),
            status_code=_STATUS[span.status.code],
            status_message=span.status.message,
            scope=scope.scope.name,
            scope_version=scope.scope.version,
            schema_url=scope.schema_url,
            resource=resource,
        )


def decode_spans(request: ExportTraceServiceRequest) -> list[DecodedSpan]:
    return [
        DecodedSpan.of(span, ss, attributes(rs.resource.attributes))
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


class DecodingSender:
    """The gateway's span sender for tests: keeps each encoded export and its decoded form."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def send(self, payload: bytes, timeout_s: float) -> bool:
        request = ExportTraceServiceRequest.FromString(payload)  # raises on a malformed encoding
        with self._lock:
            self.payloads.append(payload)
            self.requests.append(request)
        return True

    def shutdown(self) -> None:
        pass

    def spans(self) -> list[DecodedSpan]:
        with self._lock:
            requests = list(self.requests)
        return [span for request in requests for span in decode_spans(request)]
