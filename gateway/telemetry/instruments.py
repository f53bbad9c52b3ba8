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


class LocalSums:
    """Sums per label set, kept in a dict and reported through an observable instrument.

    A synchronous OTel counter validates and hashes its attributes on every add (~10 µs); this
    is a dict update on the request path, and the SDK sees one observation per series per
    collection instead.
    """

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        self._values[key] = self._values.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        for key, value in list(self._values.items()):  # a copy: collection may run on another thread
            yield Observation(value, dict(zip(self.labels, key, strict=True)))


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
        identity = ("team", "key_id") if self._identity else ()
        self.requests = LocalSums(
            ("provider", "model", "operation", "outcome", "status_class", "stream", *identity)
        )
        m.create_observable_counter(
            "llm_gateway.requests",
            [self.requests.observe],
            unit="{request}",
            description="Requests by provider, model and outcome.",
        )
        self.tokens = LocalSums(("provider", "model", "token_type", *identity))
        m.create_observable_counter(
            "llm_gateway.tokens",
            [self.tokens.observe],
            unit="{token}",
            description="Tokens by type (input, output, cache_read, cache_write, reasoning).",
        )
        self.overhead = m.create_histogram(
            "llm_gateway.overhead",
            unit="s",
            description="Time spent in the gateway itself, excluding waits on the upstream and the client.",
            explicit_bucket_boundaries_advisory=list(genai.OVERHEAD_BUCKETS),
        )
        self.upstream_errors = LocalSums(("provider", "error_type"))
        m.create_observable_counter(
            "llm_gateway.upstream.errors",
            [self.upstream_errors.observe],
            unit="{error}",
            description="Upstream failures by type.",
        )
        self.active_requests = LocalSums(("provider",))
        m.create_observable_up_down_counter(
            "llm_gateway.active_requests",
            [self.active_requests.observe],
            unit="{request}",
            description="Requests in flight.",
        )
        self.active_streams = LocalSums(("provider",))
        m.create_observable_up_down_counter(
            "llm_gateway.active_streams",
            [self.active_streams.observe],
            unit="{stream}",
            description="Streamed responses in flight.",
        )
        self.traffic = LocalSums(("provider", "direction"))
        m.create_observable_counter(
            "llm_gateway.traffic",
            [self.traffic.observe],
            unit="By",
            description="Bytes received from clients (in) and relayed to them (out).",
        )
        self.cost = LocalSums(("provider", "model", *identity))
        m.create_observable_counter(
            "llm_gateway.cost",
            [self.cost.observe],
            unit="USD",
            description="Spend in USD computed from actual usage at the model's price.",
        )
        self.cost_unknown = LocalSums(("provider", "model"))
        m.create_observable_counter(
            "llm_gateway.cost.unknown",
            [self.cost_unknown.observe],
            unit="{request}",
            description="Requests that used tokens of a model with no known price (cost unknown, not 0).",
        )
        self.limit_rejections = LocalSums(("rule",))
        m.create_observable_counter(
            "llm_gateway.limits.rejections",
            [self.limit_rejections.observe],
            unit="{request}",
            description="Requests refused by a rate limit, concurrency cap or budget, by rule.",
        )
        self.flags = LocalSums(("flag",))
        m.create_observable_counter(
            "llm_gateway.flags",
            [self.flags.observe],
            unit="{request}",
            description="Audit flags raised: budget warnings, limits not enforced, cost unknown.",
        )
        self.findings = LocalSums(("rule", "category", "severity", "location", "action"))
        m.create_observable_counter(
            "llm_gateway.scanner.findings",
            [self.findings.observe],
            unit="{finding}",
            description="Scanner findings by rule.",
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
        self.active_requests.add((provider,), 1)

    def stream_opened(self, provider: str) -> None:
        self.active_streams.add((provider,), 1)

    def finish(
        self, ex: Exchange, record: AuditRecord, route_label: str, provider: str, context: Context | None
    ) -> None:
        """Record every instrument for one finished exchange.

        Only the duration histograms get the span context: they carry the exemplars, and an
        exemplar costs a reservoir offer on every measurement that has one.
        """
        self.active_requests.add((provider,), -1)
        if ex.streamed:
            self.active_streams.add((provider,), -1)
        model = self._model(record.requested_model) if record.requested_model else ""
        stream = "true" if record.stream else "false"
        identity = (self._team(record.team), self._key(record.key_id)) if self._identity else ()
        outcome = str(record.outcome)
        self.requests.add(
            (provider, model, record.operation, outcome, f"{record.status // 100}xx", stream, *identity)
        )
        duration = record.duration_ms / 1000.0
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
        )
        self.traffic.add((provider, "in"), record.request_bytes)
        self.traffic.add((provider, "out"), record.response_bytes)
        if record.outcome in _UPSTREAM_FAILURES:
            self.upstream_errors.add((provider, upstream_error_type(record)))
        for f in record.findings:
            location = "response" if f.location.startswith("response") else "request"
            self.findings.add((f.rule, f.category, f.severity, location, f.action))
        if record.cost_usd is not None:
            self.cost.add((provider, model, *identity), float(record.cost_usd))
        for flag in record.flags:
            if flag == "cost.unknown":
                self.cost_unknown.add((provider, model))
            self.flags.add((flag,))
        if record.rejection_rule.startswith("limits."):
            self.limit_rejections.add((record.rejection_rule,))
        usage = record.usage
        for token_type, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                self.tokens.add((provider, model, token_type, *identity), count)
        view = ex.view
        if view is not None and view.endpoint.gen_ai_operation:
            self._gen_ai(ex, record, view.endpoint.gen_ai_operation, model, context)

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
        if usage.input_tokens is not None:
            self.token_usage.record(usage.input_tokens, {**attrs, genai.TOKEN_TYPE: "input"})
        if usage.output_tokens is not None:
            self.token_usage.record(usage.output_tokens, {**attrs, genai.TOKEN_TYPE: "output"})
        if ex.upstream_started is None:
            return  # rejected before the model call: no operation to time
        duration_attrs = attrs
        if record.outcome is not Outcome.OK:
            duration_attrs = {**attrs, genai.ERROR_TYPE: record.error_type or "_OTHER"}
        self.operation_duration.record(ex.finished_at - ex.upstream_started, duration_attrs, context)
        if ex.streamed and ex.first_chunk is not None:
            self.time_to_first_chunk.record(ex.first_chunk - ex.upstream_started, attrs)
            output = usage.output_tokens or 0
            if output > 1:
                self.time_per_output_token.record((ex.finished_at - ex.first_chunk) / (output - 1), attrs)

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
