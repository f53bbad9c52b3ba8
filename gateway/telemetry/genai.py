"""Attribute names and values: OpenTelemetry semantic conventions (GenAI, HTTP) and the gateway's own.

Checked against open-telemetry/semantic-conventions `docs/gen-ai/` (development status: names
may still move; this module is the one place to follow them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.audit.record import AuditRecord

# GenAI (docs/gen-ai/gen-ai-spans.md, gen-ai-metrics.md)
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
USAGE_REASONING = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"

# General / HTTP (stable)
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
USER_AGENT = "user_agent.original"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"

# The gateway's own
REQUEST_ID = "llm_gateway.request_id"
GATEWAY_PROVIDER = "llm_gateway.provider"
GATEWAY_OPERATION = "llm_gateway.operation"
OUTCOME = "llm_gateway.outcome"
KEY_ID = "llm_gateway.key_id"
TEAM = "llm_gateway.team"
USER = "llm_gateway.user"
FINDING_EVENT = "llm_gateway.guard.finding"
FIRST_CHUNK_EVENT = "llm_gateway.first_chunk"

# Metric names (OTel); the Prometheus names are derived from these and their units.
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_HTTP_SERVER_DURATION = "http.server.request.duration"

# Bucket boundaries the conventions ask for.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FIRST_CHUNK_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def span_name(operation: str, model: str) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, or the operation alone when no model is known."""
    return f"{operation} {model}" if model else operation


def request_attributes(
    operation: str, provider: str, model: str, params: dict[str, Any], host: str, port: int
) -> dict[str, Any]:
    """What is known about a model call before it is sent."""
    attrs: dict[str, Any] = {
        OPERATION: operation,
        PROVIDER: provider,
        SERVER_ADDRESS: host,
        SERVER_PORT: port,
    }
    if model:
        attrs[REQUEST_MODEL] = model
    for name, key in (
        (REQUEST_MAX_TOKENS, "max_tokens"),
        (REQUEST_TEMPERATURE, "temperature"),
        (REQUEST_TOP_P, "top_p"),
    ):
        value = params.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[name] = value
    return attrs


def response_attributes(record: AuditRecord) -> dict[str, Any]:
    """What the response told us: model, id, finish reasons, usage; error.type on failure."""
    attrs: dict[str, Any] = {}
    if record.response_model:
        attrs[RESPONSE_MODEL] = record.response_model
    if record.response_id:
        attrs[RESPONSE_ID] = record.response_id
    if record.finish_reason:
        attrs[RESPONSE_FINISH_REASONS] = [record.finish_reason]
    usage = record.usage
    for name, value in (
        (USAGE_INPUT, usage.input_tokens),
        (USAGE_OUTPUT, usage.output_tokens),
        (USAGE_CACHE_READ, usage.cache_read_tokens),
        (USAGE_CACHE_CREATION, usage.cache_write_tokens),
        (USAGE_REASONING, usage.reasoning_tokens),
    ):
        if value is not None:
            attrs[name] = value
    if record.outcome != "ok" and record.error_type:
        attrs[ERROR_TYPE] = record.error_type
    return attrs


def content_attributes(
    targets: Iterable[tuple[str, str]], output_text: str, finish_reason: str, limit: int
) -> dict[str, str]:
    """Opt-in prompt and completion content, in the conventions' JSON message shape, bounded.

    `targets` are the adapter's (location, text) pairs, the location being the role or tool part.
    """
    system: list[dict[str, str]] = []
    messages: list[dict[str, Any]] = []
    budget = limit
    for location, text in targets:
        if budget <= 0:
            break
        if location == "tool_definition":
            continue
        text = text[:budget]
        budget -= len(text)
        if location == "system":
            system.append({"type": "text", "content": text})
        elif location == "tool_call":
            messages.append({"role": "assistant", "parts": [{"type": "tool_call", "arguments": text}]})
        elif location == "tool_result":
            messages.append({"role": "tool", "parts": [{"type": "tool_call_response", "response": text}]})
        else:
            messages.append({"role": location, "parts": [{"type": "text", "content": text}]})
    attrs: dict[str, str] = {}
    if system:
        attrs[SYSTEM_INSTRUCTIONS] = orjson.dumps(system).decode()
    if messages:
        attrs[INPUT_MESSAGES] = orjson.dumps(messages).decode()
    if output_text:
        output = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": output_text[:limit]}],
                "finish_reason": finish_reason or "stop",
            }
        ]
        attrs[OUTPUT_MESSAGES] = orjson.dumps(output).decode()
    return attrs
