"""Typed telemetry settings (the `telemetry:` section of the config).

The standard OpenTelemetry environment variables win over the file where they apply:
`OTEL_SDK_DISABLED`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_EXPORTER` /
`OTEL_METRICS_EXPORTER` (`otlp` or `none`), `OTEL_EXPORTER_OTLP_*` (endpoint, protocol, headers,
timeout, compression, certificates, insecure), `OTEL_METRIC_EXPORT_INTERVAL`,
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` (span batching), the span limit
variables (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, …), and
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` for content on spans.
"""

from __future__ import annotations

from dataclasses import dataclass

OTLP_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What the gateway emits and where; see the module docstring for the environment overrides."""

    enabled: bool = True  # traces and metrics at all (OTEL_SDK_DISABLED=true turns both off)
    service_name: str = "llm-gateway"
    traces: bool = True
    metrics: bool = True
    # OTLP push: "auto" exports when an OTEL_EXPORTER_OTLP_*ENDPOINT variable is set.
    otlp: str = "auto"
    prometheus: bool = True  # GET /metrics on the gateway's own port
    capture_content: bool = False  # prompts and completions on GenAI spans (opt in)
    identity_labels: bool = False  # team and key_id as metric labels
    max_label_values: int = 200  # distinct values per free-form label (model, team, key); then "_other"
    traceresponse: bool = True  # W3C `traceresponse` header with the trace id on every response

    def __post_init__(self) -> None:
        if self.otlp not in OTLP_MODES:
            raise ValueError(f"telemetry.otlp must be one of {', '.join(OTLP_MODES)}, got {self.otlp!r}")
        if self.max_label_values < 1:
            raise ValueError("telemetry.max_label_values must be at least 1")
        if not self.service_name:
            raise ValueError("telemetry.service_name must not be empty")
