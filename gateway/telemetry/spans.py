"""Spans per exchange: a SERVER span for the HTTP request, a GenAI CLIENT span for the model call.

The upstream HTTP CLIENT span comes from opentelemetry-instrumentation-aiohttp-client, as a
child of the GenAI span (which is the current context while the request is sent). An incoming
W3C `traceparent` is continued. Findings and the first streamed chunk are span events. Spans
are started when the work starts and completed in `finish`, after the response is relayed.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.audit.record import AuditRecord, Outcome
from gateway.exchange import Exchange
from gateway.telemetry import genai


@dataclass(slots=True)
class ExchangeTrace:
    """The spans of one exchange (kept on `Exchange.trace`)."""

    server: trace.Span
    model: trace.Span | None = None
    _context: Context | None = None

    def context(self) -> Context:
        """The innermost span as a context: parent for child spans, source of metric exemplars."""
        if self._context is None:
            self._context = trace.set_span_in_context(self.model or self.server)
        return self._context

    def add_model(self, span: trace.Span) -> None:
        self.model = span
        self._context = None  # the GenAI span is the innermost now


class _ModelCall:
    """`with`: the exchange's innermost span is the current one while the request goes upstream."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._token: object = None

    def __enter__(self) -> None:
        self._token = context_api.attach(self._context)

    def __exit__(self, *exc: object) -> None:
        context_api.detach(self._token)  # type: ignore[arg-type]


_ROOT = Context()  # no incoming traceparent: a new trace (extracting nothing costs more)


def _wall_ns(perf: float) -> int:
    """A `time.perf_counter()` stamp as epoch nanoseconds (span event timestamps)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class ExchangeSpans:
    """Starts, annotates and ends the spans of each exchange."""

    def __init__(
        self,
        tracer: trace.Tracer,
        propagator: TextMapPropagator,
        upstream_addresses: dict[str, tuple[str, int]],
        capture_content: bool,
        content_limit: int,
    ) -> None:
        self._tracer = tracer
        self._propagator = propagator
        self._addresses = upstream_addresses
        self._capture = capture_content
        self._content_limit = content_limit

    def begin(self, ex: Exchange, headers: CIMultiDictProxy[str], scheme: str, host: str, route: str) -> None:
        """The SERVER span, continuing the caller's trace when it sent a `traceparent`."""
        parent = self._propagator.extract(headers) if "traceparent" in headers else _ROOT
        attrs: dict[str, Any] = {
            genai.HTTP_METHOD: ex.method,
            genai.HTTP_ROUTE: route,
            genai.URL_PATH: ex.path if not ex.provider else f"/{ex.provider}{ex.path}",
            genai.URL_SCHEME: scheme,
            genai.REQUEST_ID: ex.request_id,
        }
        if ex.client_address:
            attrs[genai.CLIENT_ADDRESS] = ex.client_address
        if ex.user_agent:
            attrs[genai.USER_AGENT] = ex.user_agent
        if host:
            attrs[genai.SERVER_ADDRESS] = host
        span = self._tracer.start_span(f"{ex.method} {route}", parent, SpanKind.SERVER, attrs)
        ex.trace = ExchangeTrace(span)
        ctx = span.get_span_context()
        if ctx.is_valid:
            ex.trace_id, ex.span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
            ex.traceresponse = f"00-{ex.trace_id}-{ex.span_id}-{int(ctx.trace_flags):02x}"

    def model_call(self, ex: Exchange) -> AbstractContextManager[None]:
        """Start the GenAI span (for GenAI operations); it is the current span while the request is sent."""
        state = ex.trace
        view = ex.view
        if not isinstance(state, ExchangeTrace) or view is None:
            return nullcontext()
        operation = view.endpoint.gen_ai_operation
        if operation:
            host, port = self._addresses.get(ex.provider, ("", 0))
            model = self._tracer.start_span(
                genai.span_name(operation, view.model),
                state.context(),
                SpanKind.CLIENT,
                genai.request_attributes(
                    operation, view.adapter.gen_ai_provider, view.model, view.params, host, port
                ),
            )
            state.add_model(model)
        return _ModelCall(state.context())

    def finish(self, ex: Exchange, record: AuditRecord) -> None:
        """Annotate and end the spans with what the exchange turned out to be."""
        state = ex.trace
        if not isinstance(state, ExchangeTrace):
            return
        server, model = state.server, state.model
        if model is not None:
            if model.is_recording():
                model.set_attributes(genai.response_attributes(record))
                if ex.first_chunk is not None:
                    model.add_event(genai.FIRST_CHUNK_EVENT, timestamp=_wall_ns(ex.first_chunk))
                if self._capture and ex.view is not None and ex.keeps_content:
                    # Content on spans follows audit.content: redacted there, redacted here.
                    redact = ex.redact_content or str
                    model.set_attributes(
                        genai.content_attributes(
                            ((t.location, redact(t.text)) for t in ex.view.scan_targets()),
                            record.response_preview,
                            record.finish_reason,
                            self._content_limit,
                        )
                    )
                if record.outcome is not Outcome.OK:
                    model.set_status(Status(StatusCode.ERROR, record.error_type))
            model.end()
        if server.is_recording():
            attrs: dict[str, Any] = {
                genai.HTTP_STATUS: record.status,
                genai.OUTCOME: str(record.outcome),
                genai.GATEWAY_PROVIDER: record.provider,
                genai.GATEWAY_OPERATION: record.operation,
            }
            for name, value in (
                (genai.KEY_ID, record.key_id),
                (genai.TEAM, record.team),
                (genai.USER, record.user),
            ):
                if value:
                    attrs[name] = value
            if model is None and ex.first_chunk is not None:
                server.add_event(genai.FIRST_CHUNK_EVENT, timestamp=_wall_ns(ex.first_chunk))
            for finding in record.findings:
                server.add_event(
                    genai.FINDING_EVENT,
                    {
                        "rule": finding.rule,
                        "category": finding.category,
                        "severity": finding.severity,
                        "location": finding.location,
                        "action": finding.action,
                    },
                )
            if record.status >= 500:  # server spans: only 5xx is an error (4xx is the caller's)
                attrs[genai.ERROR_TYPE] = str(record.status)
                server.set_status(Status(StatusCode.ERROR, record.error_type or str(record.status)))
            server.set_attributes(attrs)
        server.end()
