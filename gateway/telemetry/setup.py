"""Build the telemetry of one gateway: tracer and meter providers, exporters, and the facade the proxy calls.

Traces go through the gateway's own implementation of the OpenTelemetry trace API
(gateway/telemetry/tracer.py: spans become OTLP bytes as they end), metrics through the OTel SDK.
Nothing here sets OpenTelemetry's global providers: each app owns its own, so tests can build
several gateways side by side and inspect what each one exports.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from gateway import __version__
from gateway.audit.record import AuditRecord
from gateway.config import GatewayConfig
from gateway.exchange import Exchange
from gateway.telemetry import otlp_encoding
from gateway.telemetry.instruments import Instruments
from gateway.telemetry.otlp_transport import OtlpTarget, sender_for
from gateway.telemetry.prometheus import PrometheusReader
from gateway.telemetry.push import MetricsPusher
from gateway.telemetry.sampling import sampler_from_env
from gateway.telemetry.settings import TelemetrySettings
from gateway.telemetry.span_export import BatchSettings, BatchSpanExporter, SpanSender
from gateway.telemetry.span_limits import SpanLimits
from gateway.telemetry.spans import ExchangeSpans, ExchangeTrace
from gateway.telemetry.tracer import GatewayTracerProvider

log = logging.getLogger(__name__)

SCOPE = "llm_gateway"
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
_KEPT_HEADERS = "llm_gateway_trace_headers"  # on aiohttp's per-request trace context: the caller's own
_SECRET_PARAMS = frozenset(("key", "api_key", "apikey", "access_token", "token"))


def _env_true(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def otlp_wanted(settings: TelemetrySettings, env: Mapping[str, str], signal: str) -> bool:
    """Push `signal` ("traces"/"metrics") over OTLP? `OTEL_<SIGNAL>_EXPORTER=none` always says no."""
    exporter = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter == "none" or settings.otlp == "off":
        return False
    if exporter and exporter != "otlp":
        log.warning(
            "OTEL_%s_EXPORTER=%s is not supported (otlp or none); using otlp", signal.upper(), exporter
        )
    if settings.otlp == "on" or exporter == "otlp":
        return True
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _otlp_protocol(env: Mapping[str, str], signal: str) -> str:
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _metric_exporter(env: Mapping[str, str]) -> Any:
    if _otlp_protocol(env, "metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
    return OTLPMetricExporter()


def redact_url(url: URL) -> str:
    """The upstream URL for span attributes, with credential-like query parameters blanked."""
    if not url.query_string:
        return str(url)
    query = [(k, "REDACTED" if k.lower() in _SECRET_PARAMS else v) for k, v in url.query.items()]
    return str(url.with_query(query))


def upstream_addresses(config: GatewayConfig) -> dict[str, tuple[str, int]]:
    """server.address / server.port of each provider's upstream."""
    out = {}
    for name, provider in config.providers.items():
        parts = urlsplit(provider.base_url)
        out[name] = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    return out


class Telemetry:
    """What the request path calls: begin, model_call, stream_opened, finish — each cheap or a no-op."""

    def __init__(
        self,
        config: GatewayConfig,
        tracer_provider: GatewayTracerProvider | None,
        meter_provider: MeterProvider | None,
        prometheus: PrometheusReader | None,
        capture_content: bool,
        pusher: MetricsPusher | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.prometheus = prometheus  # None: /metrics is off
        self.pusher = pusher
        self.traceresponse = config.telemetry.traceresponse
        addresses = upstream_addresses(config)
        self._known_providers = frozenset(config.providers)
        self.spans = (
            ExchangeSpans(
                tracer_provider.get_tracer(SCOPE, __version__),
                TraceContextTextMapPropagator(),
                addresses,
                capture_content,
                config.capture.request_preview_chars,
            )
            if tracer_provider is not None
            else None
        )
        self.instruments = (
            Instruments(meter_provider.get_meter(SCOPE, __version__), config.telemetry, addresses)
            if meter_provider is not None
            else None
        )

    def watch_audit(self, stats: Any) -> None:
        """Observe the audit writer's queue, spool and counters (a callable returning WriterStats)."""
        if self.instruments is not None:
            self.instruments.watch_audit(stats)

    def trace_configs(self, forward_traceparent: bool) -> list[aiohttp.TraceConfig]:
        """Client-session hooks: the upstream HTTP CLIENT span, and the caller's trace headers kept as sent.

        The instrumentation injects a child `traceparent`; unless the provider is configured to get
        one, the caller's own trace headers (or none) go upstream unchanged.
        """
        if self.tracer_provider is None:
            return []
        otel = create_trace_config(
            url_filter=redact_url,
            tracer_provider=self.tracer_provider,
            # Its http.client.request.duration would duplicate gen_ai.client.operation.duration
            # at ~20 µs a request; the span is what we want from it.
            meter_provider=NoOpMeterProvider(),
            sem_conv_opt_in_mode=_StabilityMode.HTTP,
        )
        if not forward_traceparent:
            # Around the instrumentation's own hook, in its TraceConfig: aiohttp then runs one
            # trace per request, not three, and both hooks share its per-request context.
            otel.on_request_start.insert(0, _keep_callers_trace_headers)
            otel.on_request_start.append(_restore_callers_trace_headers)
        return [otel]

    def begin(self, ex: Exchange, request: web.Request) -> None:
        """Start the SERVER span and count the request in flight; never raises into the request path."""
        if self.instruments is None and self.spans is None:
            return
        try:
            ex.route_label = self._route_label(request, ex)
            if self.instruments is not None:
                self.instruments.begin(self._provider_label(ex.provider))
            if self.spans is not None:
                self.spans.begin(ex, request.headers, request.scheme, request.host, ex.route_label)
                if not self.traceresponse:
                    ex.traceresponse = ""
        except Exception:
            log.exception("telemetry for %s failed to start", ex.request_id)

    def model_call(self, ex: Exchange) -> Any:
        """A context manager around sending the request upstream (the GenAI span is current in it)."""
        if self.spans is None:
            return nullcontext()
        return self.spans.model_call(ex)

    def stream_opened(self, ex: Exchange) -> None:
        if self.instruments is not None:
            self.instruments.stream_opened(self._provider_label(ex.provider))

    def finish(self, ex: Exchange, record: AuditRecord) -> None:
        """End the spans and record the metrics of one exchange; never raises into the request path."""
        try:
            context = ex.trace.context() if isinstance(ex.trace, ExchangeTrace) else None
            if self.instruments is not None:
                self.instruments.finish(
                    ex, record, ex.route_label, self._provider_label(ex.provider), context
                )
            if self.spans is not None:
                self.spans.finish(ex, record)
        except Exception:
            log.exception("telemetry for %s failed", record.request_id)

    def metrics_page(self, accept: str) -> tuple[bytes, str] | None:
        return self.prometheus.render(accept) if self.prometheus is not None else None

    def shutdown(self) -> None:
        """Flush and stop the exporters (spans in the batch queue, a last metric push)."""
        if self.pusher is not None:
            try:
                self.pusher.shutdown()
            except Exception:
                log.exception("telemetry shutdown failed")
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:
                    log.exception("telemetry shutdown failed")

    def _provider_label(self, provider: str) -> str:
        return provider if provider in self._known_providers else "_unknown"

    def _route_label(self, request: web.Request, ex: Exchange) -> str:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        if ex.provider in self._known_providers:
            template = template.replace("{provider}", ex.provider)
        return template


async def _keep_callers_trace_headers(
    session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams
) -> None:
    headers = params.headers
    setattr(
        ctx, _KEPT_HEADERS, [(name, value) for name in _TRACE_HEADERS for value in headers.popall(name, ())]
    )


async def _restore_callers_trace_headers(
    session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams
) -> None:
    headers = params.headers
    for name in _TRACE_HEADERS:
        headers.popall(name, None)
    for name, value in getattr(ctx, _KEPT_HEADERS, ()):
        headers.add(name, value)


def build_tracer_provider(
    resource: Resource, sender: SpanSender, env: Mapping[str, str]
) -> GatewayTracerProvider:
    """The gateway's tracer provider: spans encoded as they end, batched to `sender`."""
    resource_body = otlp_encoding.resource(otlp_encoding.AttributeEncoder(), resource.attributes)
    exporter = BatchSpanExporter(sender, resource_body, BatchSettings.from_env(env))
    return GatewayTracerProvider(exporter, sampler_from_env(env), SpanLimits.from_env(env))


def build_telemetry(
    config: GatewayConfig,
    env: Mapping[str, str] | None = None,
    *,
    span_sender: SpanSender | None = None,
    metric_readers: tuple[MetricReader, ...] = (),
) -> Telemetry:
    """Providers and exporters from the config and the standard OTEL_* variables.

    Tracing is on when spans have somewhere to go: OTLP (see `otlp_wanted`) or a `span_sender`
    given by the caller (tests: it decodes what OTLP would carry). Metrics are on when
    Prometheus pull, OTLP push or a given reader is.
    """
    env = os.environ if env is None else env
    settings = config.telemetry
    if not settings.enabled or _env_true(env, "OTEL_SDK_DISABLED"):
        return Telemetry(config, None, None, None, False)
    resource = Resource.create(
        {
            "service.name": env.get("OTEL_SERVICE_NAME") or settings.service_name,
            "service.version": __version__,
            "service.instance.id": str(uuid.uuid4()),
        }
    )
    tracer_provider = None
    if settings.traces:
        sender = span_sender
        if sender is None and otlp_wanted(settings, env, "traces"):
            sender = sender_for(OtlpTarget.for_traces(env, _otlp_protocol(env, "traces")))
        if sender is not None:
            tracer_provider = build_tracer_provider(resource, sender, env)
    meter_provider = None
    prometheus = pusher = None
    if settings.metrics:
        push = otlp_wanted(settings, env, "metrics")
        readers = list(metric_readers)
        if settings.prometheus or push:
            # One on-demand reader serves both the /metrics scrape and the OTLP push.
            reader = PrometheusReader()
            readers.append(reader)
            prometheus = reader if settings.prometheus else None
            pusher = MetricsPusher(reader, _metric_exporter(env), env) if push else None
        if readers:
            meter_provider = MeterProvider(metric_readers=readers, resource=resource)
    capture = settings.capture_content or _env_true(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    return Telemetry(config, tracer_provider, meter_provider, prometheus, capture, pusher)
