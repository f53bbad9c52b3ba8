"""Every metric the gateway emits, created once; one call per exchange records them all.

Labels stay bounded: no ids, prompts or free text. Free-form values (models, and team/key when
`identity_labels` is on) pass through `BoundedValues`, which maps values beyond a cap to `_other`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.audit.record import AuditRecord, Outcome
from gateway.audit.writer import WriterStats
from gateway.exchange import Exchange
from gateway.telemetry import genai
from gateway.telemetry.settings import TelemetrySettings

OTHER = "_other"
_HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_UPSTREAM_FAILURES = frozenset((Outcome.UPSTREAM_ERROR, Outcome.UPSTREAM_UNREACHABLE, Outcome.TIMEOUT))


class BoundedValues:
    """Passes the first `limit` distinct values of a label; later new values become `_other`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


def upstream_error_type(record: AuditRecord) -> str:
    """A small fixed set: timeout, unreachable, http_4xx, http_5xx, stream_error."""
    if record.outcome is Outcome.TIMEOUT:
        return "timeout"
    if record.outcome is Outcome.UPSTREAM_UNREACHABLE:
        return "unreachable"
    if record.status >= 400:
        return f"http_{record.status // 100}xx"
    return "stream_error"  # a 2xx stream the upstream ended with its own error event


class Instruments:
    """The gateway's instruments on one OTel meter."""

    def __init__(
        self,
        meter: Meter,
        settings: TelemetrySettings,
        upstream_addresses: dict[str, tuple[str, int]],
    ) -> None:
        self._identity = settings.identity_labels
        self._model = BoundedValues(settings.max_label_values)
        self._team = BoundedValues(settings.max_label_values)
        self._key = BoundedValues(settings.max_label_values)
        self._addresses = upstream_addresses
        self._audit_stats: Callable[[], WriterStats] | None = None
        m = meter
        self.token_usage = m.create_histogram(
            genai.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(genai.TOKEN_BUCKETS),
        )
        self.operation_duration = m.create_histogram(
            genai.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(genai.DURATION_BUCKETS),
        )
        self.time_to_first_chunk = m.create_histogram(
            genai.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from sending the request upstream to the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(genai.FIRST_CHUNK_BUCKETS),
        )
        self.time_per_output_token = m.create_histogram(
            "llm_gateway.time_per_output_token",
            unit="s",
            description="Streaming time per output token after the first chunk.",
            explicit_bucket_boundaries_advisory=list(genai.PER_TOKEN_BUCKETS),
        )
        self.http_duration = m.create_histogram(
            genai.METRIC_HTTP_SERVER_DURATION,
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(genai.HTTP_BUCKETS),
        )
        self.requests = m.create_counter(
            "llm_gateway.requests", unit="{request}", description="Requests by provider, model and outcome."
        )
        self.tokens = m.create_counter(
            "llm_gateway.tokens",
            unit="{token}",
            description="Tokens by type (input, output, cache, reasoning).",
        )
        self.overhead = m.create_histogram(
            "llm_gateway.overhead",
            unit="s",
            description="Time spent in the gateway itself, excluding waits on the upstream and the client.",
            explicit_bucket_boundaries_advisory=list(genai.OVERHEAD_BUCKETS),
        )
        self.upstream_errors = m.create_counter(
            "llm_gateway.upstream.errors", unit="{error}", description="Upstream failures by type."
        )
        self.active_requests = m.create_up_down_counter(
            "llm_gateway.active_requests", unit="{request}", description="Requests in flight."
        )
        self.active_streams = m.create_up_down_counter(
            "llm_gateway.active_streams", unit="{stream}", description="Streamed responses in flight."
        )
        self.traffic = m.create_counter(
            "llm_gateway.traffic",
            unit="By",
            description="Bytes received from clients (in) and relayed (out).",
        )
        self.findings = m.create_counter(
            "llm_gateway.scanner.findings", unit="{finding}", description="Scanner findings by rule."
        )
        m.create_observable_gauge(
            "llm_gateway.audit.queue_depth",
            callbacks=[self._observe_queue],
            unit="{record}",
            description="Audit records waiting for the store.",
        )
        m.create_observable_gauge(
            "llm_gateway.audit.spool_backlog",
            callbacks=[self._observe_backlog],
            unit="{record}",
            description="Audit records in the disk spool, waiting for replay.",
        )
        m.create_observable_counter(
            "llm_gateway.audit.records",
            callbacks=[self._observe_records],
            unit="{record}",
            description="Audit records by state: written, spooled, replayed, dropped (must stay 0).",
        )

    def watch_audit(self, stats: Callable[[], WriterStats]) -> None:
        self._audit_stats = stats

    # -- per exchange ---------------------------------------------------------------------------

    def begin(self, provider: str) -> None:
        self.active_requests.add(1, {"provider": provider})

    def stream_opened(self, provider: str) -> None:
        self.active_streams.add(1, {"provider": provider})

    def finish(
        self, ex: Exchange, record: AuditRecord, route_label: str, provider: str, context: Context | None
    ) -> None:
        """Record every instrument for one finished exchange."""
        self.active_requests.add(-1, {"provider": provider})
        if ex.streamed:
            self.active_streams.add(-1, {"provider": provider})
        view = ex.view
        model = self._model(record.requested_model) if record.requested_model else ""
        stream = "true" if record.stream else "false"
        duration = record.duration_ms / 1000.0
        gateway_attrs: dict[str, Any] = {"provider": provider, "model": model}
        if self._identity:
            gateway_attrs["team"] = self._team(record.team)
            gateway_attrs["key_id"] = self._key(record.key_id)
        self.requests.add(
            1,
            {
                **gateway_attrs,
                "operation": record.operation,
                "outcome": str(record.outcome),
                "status_class": f"{record.status // 100}xx",
                "stream": stream,
            },
            context,
        )
        http_attrs: dict[str, Any] = {
            genai.HTTP_METHOD: record.method if record.method in _HTTP_METHODS else "_OTHER",
            genai.HTTP_ROUTE: route_label,
            genai.HTTP_STATUS: record.status,
        }
        if record.status >= 500:
            http_attrs[genai.ERROR_TYPE] = str(record.status)
        self.http_duration.record(duration, http_attrs, context)
        self.overhead.record(
            max(duration - ex.upstream_wait - ex.client_wait, 0.0),
            {"provider": provider, "operation": record.operation, "stream": stream},
            context,
        )
        self.traffic.add(record.request_bytes, {"provider": provider, "direction": "in"})
        self.traffic.add(record.response_bytes, {"provider": provider, "direction": "out"})
        if record.outcome in _UPSTREAM_FAILURES:
            self.upstream_errors.add(1, {"provider": provider, "error_type": upstream_error_type(record)})
        for finding in record.findings:
            self.findings.add(
                1,
                {
                    "rule": finding.rule,
                    "category": finding.category,
                    "severity": finding.severity,
                    "location": "response" if finding.location.startswith("response") else "request",
                    "action": finding.action,
                },
            )
        self._tokens(record, gateway_attrs, context)
        if view is not None and view.endpoint.gen_ai_operation:
            self._gen_ai(ex, record, view.endpoint.gen_ai_operation, model, context)

    def _tokens(self, record: AuditRecord, attrs: dict[str, Any], context: Context | None) -> None:
        usage = record.usage
        for token_type, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                self.tokens.add(count, {**attrs, "token_type": token_type}, context)

    def _gen_ai(
        self, ex: Exchange, record: AuditRecord, operation: str, model: str, context: Context | None
    ) -> None:
        adapter = ex.view.adapter if ex.view is not None else None
        attrs: dict[str, Any] = {
            genai.OPERATION: operation,
            genai.PROVIDER: adapter.gen_ai_provider if adapter is not None else "",
        }
        if model:
            attrs[genai.REQUEST_MODEL] = model
        if record.response_model:
            attrs[genai.RESPONSE_MODEL] = self._model(record.response_model)
        address = self._addresses.get(record.provider)
        if address is not None:
            attrs[genai.SERVER_ADDRESS], attrs[genai.SERVER_PORT] = address
        usage = record.usage
        for token_type, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            if count is not None:
                self.token_usage.record(count, {**attrs, genai.TOKEN_TYPE: token_type}, context)
        if ex.upstream_started is None:
            return  # rejected before the model call: no operation to time
        duration_attrs = attrs
        if record.outcome is not Outcome.OK:
            duration_attrs = {**attrs, genai.ERROR_TYPE: record.error_type or "_OTHER"}
        self.operation_duration.record(ex.finished_at - ex.upstream_started, duration_attrs, context)
        if ex.streamed and ex.first_chunk is not None:
            self.time_to_first_chunk.record(ex.first_chunk - ex.upstream_started, attrs, context)
            output = usage.output_tokens or 0
            if output > 1:
                per_token = (ex.finished_at - ex.first_chunk) / (output - 1)
                self.time_per_output_token.record(per_token, attrs, context)

    # -- audit observations -----------------------------------------------------------------------

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._audit_stats is not None:
            yield Observation(self._audit_stats().queued)

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._audit_stats is not None:
            yield Observation(self._audit_stats().spool_backlog)

    def _observe_records(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._audit_stats is not None:
            stats = self._audit_stats()
            for state in ("written", "spooled", "replayed", "dropped"):
                yield Observation(getattr(stats, state), {"state": state})
