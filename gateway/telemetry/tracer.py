"""A lean implementation of the OpenTelemetry trace API whose finished spans go straight to OTLP bytes.

Why not the SDK's TracerProvider: its spans, BatchSpanProcessor and OTLP encoder cost more than
the whole telemetry budget (3.3x the instructions of this path per request; the SDK spans with
this module's encoder as their exporter still 1.9x; bench/README.md). This provider implements
the same API (`opentelemetry.trace.TracerProvider`, `Tracer`, `Span`), so the gateway's spans and
the aiohttp-client instrumentation's span are written the same way, and each span is encoded
once, when it ends, into the protobuf bytes the exporter sends.

What it keeps from the SDK: W3C ids and parent/child links through `opentelemetry.context`,
the standard samplers (gateway.telemetry.sampling), span limits from the `OTEL_*_LIMIT`
variables, attribute validation, events, links, status rules, `record_exception`. What it
leaves out: span processors and exporters as plugins (there is one exporter: OTLP).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util import types

from gateway.telemetry import otlp_encoding as otlp
from gateway.telemetry.sampling import Sampler
from gateway.telemetry.span_export import BatchSpanExporter
from gateway.telemetry.span_limits import INVALID, PLAIN_TYPES, SpanLimits, bounded_attributes, clean_value

log = logging.getLogger(__name__)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_EMPTY_STATE = TraceState()
_KIND = {kind: b"\x30" + otlp.varint(kind.value + 1) for kind in SpanKind}  # SpanKind + 1 = OTLP's enum
_SAMPLED_FLAGS = {remote: otlp.span_flags(TraceFlags.SAMPLED, remote) for remote in (None, False, True)}


class RecordingSpan(trace.Span):
    """A sampled span: holds what it records until `end`, then becomes OTLP bytes."""

    __slots__ = (
        "_context",
        "_record_exception",
        "_set_status_on_exception",
        "_tracer",
        "attributes",
        "dropped_attributes",
        "dropped_events",
        "dropped_links",
        "end_ns",
        "events",
        "kind",
        "links",
        "name",
        "parent_is_remote",
        "parent_span_id",
        "span_id",
        "start_ns",
        "status_code",
        "status_message",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        tracer: GatewayTracer,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        parent_is_remote: bool | None,
        trace_state: TraceState,
        start_ns: int,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> None:
        self._tracer = tracer
        self._context: SpanContext | None = None
        self._record_exception = record_exception  # when used as `with span:` (see __exit__)
        self._set_status_on_exception = set_status_on_exception
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.parent_is_remote = parent_is_remote  # None: no parent
        self.trace_state = trace_state
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes: dict[str, Any] = {}
        self.dropped_attributes = 0
        self.events: list[tuple[str, int, dict[str, Any], int]] = []
        self.dropped_events = 0
        self.links: list[tuple[SpanContext, dict[str, Any], int]] = []
        self.dropped_links = 0
        self.status_code = StatusCode.UNSET
        self.status_message = ""

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = SpanContext(
                self.trace_id, self.span_id, False, _SAMPLED, self.trace_state
            )
        return context

    def is_recording(self) -> bool:
        return not self.end_ns

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self.end_ns:
            log.warning("span %r has ended; attribute %r not set", self.name, key)
            return
        limits = self._tracer.limits
        cleaned = clean_value(value, limits.attribute_length)
        if cleaned is INVALID or not key or not isinstance(key, str):
            log.warning("attribute %r: invalid key or value type %s; dropped", key, type(value).__name__)
        elif key in self.attributes or len(self.attributes) < limits.attributes:
            self.attributes[key] = cleaned
        else:
            self.dropped_attributes += 1

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self.end_ns:
            log.warning("span %r has ended; attributes not set", self.name)
            return
        mine, limits = self.attributes, self._tracer.limits
        for key, value in attributes.items():
            if (
                type(value) in PLAIN_TYPES
                and limits.attribute_length is None
                and type(key) is str
                and key
                and (key in mine or len(mine) < limits.attributes)
            ):
                mine[key] = value
            else:
                self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self.end_ns:
            return
        limits = self._tracer.limits
        if len(self.events) >= limits.events:
            self.dropped_events += 1
            return
        kept, dropped = bounded_attributes(attributes, limits.event_attributes, limits.attribute_length)
        self.events.append((name, timestamp or time.time_ns(), kept, dropped))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_ns or context is None or (not context.is_valid and not attributes):
            return
        limits = self._tracer.limits
        if len(self.links) >= limits.links:
            self.dropped_links += 1
            return
        kept, dropped = bounded_attributes(attributes, limits.link_attributes, limits.attribute_length)
        self.links.append((context, kept, dropped))

    def update_name(self, name: str) -> None:
        if not self.end_ns:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """OK is final; UNSET changes nothing; a description belongs to ERROR only (the API's rules)."""
        if self.end_ns or self.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self.status_code = code
        self.status_message = (description or "") if code is StatusCode.ERROR else ""

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An `exception` event with the semantic conventions' exception.* attributes."""
        cls = type(exception)
        module = cls.__module__
        event: dict[str, Any] = {
            "exception.type": cls.__qualname__
            if module in ("builtins", "")
            else f"{module}.{cls.__qualname__}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """`with tracer.start_span(...)`: an exception escaping the block is recorded, as in the SDK."""
        if isinstance(exc_val, Exception) and not self.end_ns:
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns:
            log.warning("span %r ended twice", self.name)
            return
        self.end_ns = end_time or time.time_ns()
        self._tracer.finish(self)

    def encode(self, encoder: otlp.AttributeEncoder) -> bytes:
        """This span as one `ScopeSpans.spans` entry."""
        state = self.trace_state.to_header() if self.trace_state else ""
        parts = [
            otlp.span_prefix(self.trace_id, self.span_id, state, self.parent_span_id),
            encoder.name(self.name),
            _KIND[self.kind],
            otlp.span_times(self.start_ns, self.end_ns),
        ]
        parts += encoder.fields(otlp.SPAN_ATTRIBUTE_TAG, self.attributes)
        if self.dropped_attributes:
            parts.append(b"\x50" + otlp.varint(self.dropped_attributes))
        for name_, time_ns, attributes, dropped in self.events:
            parts.append(otlp.delimited(b"\x5a", otlp.event(encoder, name_, time_ns, attributes, dropped)))
        if self.dropped_events:
            parts.append(b"\x60" + otlp.varint(self.dropped_events))
        for context, attributes, dropped in self.links:
            body = otlp.link(
                encoder,
                context.trace_id,
                context.span_id,
                context.trace_state.to_header() if context.trace_state else "",
                context.trace_flags,
                context.is_remote,
                attributes,
                dropped,
            )
            parts.append(otlp.delimited(b"\x6a", body))
        if self.dropped_links:
            parts.append(b"\x70" + otlp.varint(self.dropped_links))
        if self.status_code is not StatusCode.UNSET:
            code = otlp.STATUS_ERROR if self.status_code is StatusCode.ERROR else otlp.STATUS_OK
            parts.append(otlp.delimited(b"\x7a", otlp.status(code, self.status_message)))
        parts.append(_SAMPLED_FLAGS[self.parent_is_remote])
        return otlp.span_message(parts)


class GatewayTracer(trace.Tracer):
    """Starts spans for one instrumentation scope."""

    def __init__(self, provider: GatewayTracerProvider, scope_index: int) -> None:
        self._provider = provider
        self._scope_index = scope_index
        self._sampler = provider.sampler
        self.limits = provider.limits

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if type(parent) is RecordingSpan:  # the common case: a local, sampled parent
            trace_id, parent_id, remote, sampled = parent.trace_id, parent.span_id, False, True
            state = parent.trace_state
        else:
            pc = parent.get_span_context()
            if pc.is_valid:
                trace_id, parent_id, remote, sampled = (
                    pc.trace_id,
                    pc.span_id,
                    pc.is_remote,
                    pc.trace_flags.sampled,
                )
                state = pc.trace_state
            else:
                trace_id, parent_id, remote, sampled = 0, 0, None, None
                state = _EMPTY_STATE
        if not trace_id:
            trace_id = random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        if not self._sampler.sampled(sampled, trace_id):
            return trace.NonRecordingSpan(SpanContext(trace_id, span_id, False, _NOT_SAMPLED, state))
        span = RecordingSpan(
            self,
            name,
            kind,
            trace_id,
            span_id,
            parent_id,
            remote,
            state,
            start_time or time.time_ns(),
            record_exception,
            set_status_on_exception,
        )
        if attributes:
            span.attributes, span.dropped_attributes = bounded_attributes(
                attributes, self.limits.attributes, self.limits.attribute_length
            )
        for link in links or ():
            span.add_link(link.context, link.attributes)
        return span

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit, record_exception, set_status_on_exception) as current:
            yield current

    def finish(self, span: RecordingSpan) -> None:
        self._provider.exporter.enqueue(self._scope_index, span.encode(self._provider.encoder))


class GatewayTracerProvider(trace.TracerProvider):
    """Tracers for the gateway and the libraries it instruments; one resource, one OTLP exporter."""

    def __init__(self, exporter: BatchSpanExporter, sampler: Sampler, limits: SpanLimits) -> None:
        self.exporter = exporter
        self.sampler = sampler
        self.limits = limits
        self.encoder = otlp.AttributeEncoder()
        self._tracers: dict[tuple[str, str, str, tuple[tuple[str, Any], ...]], GatewayTracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> GatewayTracer:
        name = instrumenting_module_name or ""
        if not name:
            log.warning("get_tracer called without an instrumentation scope name")
        version, schema = instrumenting_library_version or "", schema_url or ""
        key = (name, version, schema, tuple(sorted((attributes or {}).items())))
        tracer = self._tracers.get(key)
        if tracer is None:
            scope = otlp.scope(name, version, attributes)
            tracer = self._tracers[key] = GatewayTracer(self, self.exporter.add_scope(scope, schema))
        return tracer

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every ended span now; True when done within the timeout."""
        return self.exporter.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread."""
        self.exporter.shutdown()
