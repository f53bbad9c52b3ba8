"""Anthropic Messages API wire format."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from gateway.audit.record import Usage
from gateway.errors import ErrorCode, GatewayError
from gateway.providers.base import (
    OPAQUE,
    Endpoint,
    JsonPath,
    RequestView,
    ResponseParser,
    ResponseSummary,
    StreamFilter,
    StreamText,
    TextTarget,
    load_json_object,
)
from gateway.providers.parsing import (
    JsonResponseParser,
    PreviewText,
    StreamResponseParser,
    as_int,
    loads,
    text_targets,
    value_target,
)
from gateway.sse import SSEEvent

ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/messages"): Endpoint("messages", "chat"),
    ("POST", "/v1/messages/count_tokens"): Endpoint("messages.count_tokens", ""),
    ("POST", "/v1/complete"): Endpoint("complete", "text_completion"),
    ("GET", "/v1/models"): Endpoint("models.list", "", json_body=False),
}

# error.type per gateway error code, as the Anthropic API spells them.
ERROR_TYPES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "invalid_request_error",
    ErrorCode.AUTHENTICATION: "authentication_error",
    ErrorCode.PERMISSION_DENIED: "permission_error",
    ErrorCode.NOT_FOUND: "not_found_error",
    ErrorCode.REQUEST_TOO_LARGE: "request_too_large",
    ErrorCode.RATE_LIMITED: "rate_limit_error",
    ErrorCode.BUDGET_EXCEEDED: "rate_limit_error",
    ErrorCode.INTERNAL: "api_error",
    ErrorCode.UPSTREAM_UNREACHABLE: "api_error",
    ErrorCode.UNAVAILABLE: "overloaded_error",
    ErrorCode.UPSTREAM_TIMEOUT: "timeout_error",
}


OUTPUT_LIMIT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "messages": (("max_tokens",),),
    "complete": (("max_tokens_to_sample",),),
}


class AnthropicAdapter:
    kind = "anthropic"
    gen_ai_provider = "anthropic"
    default_base_url = "https://api.anthropic.com"

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "x-api-key", secret

    def output_limit_fields(self, operation: str) -> tuple[tuple[str, ...], ...]:
        return OUTPUT_LIMIT_FIELDS.get(operation, ())

    def classify(self, method: str, path: str) -> Endpoint:
        return ENDPOINTS.get((method, path), OPAQUE)

    def parse_request(self, method: str, path: str, query: str, body: bytes) -> RequestView:
        endpoint = self.classify(method, path)
        view = RequestView(self, method, path, query, body, endpoint)
        if endpoint.json_body:
            data = load_json_object(body)
            view.json = data
            model = data.get("model")
            view.model = model if isinstance(model, str) else ""
            view.stream = data.get("stream") is True
            view.params = {
                "max_tokens": data.get("max_tokens") or data.get("max_tokens_to_sample"),
                "temperature": data.get("temperature"),
                "top_p": data.get("top_p"),
            }
        return view

    def scan_targets(self, body: Mapping[str, Any]) -> Iterator[TextTarget]:
        yield from text_targets("system", body.get("system"), ("system",))
        messages = body.get("messages")
        for i, msg in enumerate(messages if isinstance(messages, list) else ()):
            if not isinstance(msg, dict):
                continue
            role = "assistant" if msg.get("role") == "assistant" else "user"
            content = msg.get("content")
            path: JsonPath = ("messages", i, "content")
            if isinstance(content, str):
                yield from text_targets(role, content, path)
                continue
            for j, block in enumerate(content if isinstance(content, list) else ()):
                if not isinstance(block, dict):
                    continue
                kind = block.get("type")
                if kind == "text":
                    yield from value_target(role, block, "text", (*path, j))
                elif kind == "tool_result":
                    yield from text_targets("tool_result", block.get("content"), (*path, j, "content"))
                elif kind == "tool_use":
                    yield from value_target("tool_call", block, "input", (*path, j))
        if isinstance(body.get("prompt"), str):
            yield from value_target("user", body, "prompt", ())
        tools = body.get("tools")
        for i in range(len(tools) if isinstance(tools, list) else 0):
            yield from value_target("tool_definition", tools, i, ("tools",))

    def output_targets(self, body: Any) -> Iterator[TextTarget]:
        content = body.get("content") if isinstance(body, dict) else None
        for i, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                yield from value_target("output", block, "text", ("content", i))
            elif block.get("type") == "tool_use":
                yield from value_target("output_tool_call", block, "input", ("content", i))
        yield from value_target("output", body, "completion", ())  # legacy text completions

    def stream_texts(self, data: Mapping[str, Any]) -> list[StreamText]:
        # Thinking deltas are left alone: thinking blocks are signed, a changed one is refused.
        kind = data.get("type")
        index = data.get("index", 0)
        if kind == "content_block_delta":
            delta = data.get("delta")
            if not isinstance(delta, dict):
                return []
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return [StreamText(("text", index), "output", ("delta", "text"), delta["text"])]
            if delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                path: JsonPath = ("delta", "partial_json")
                return [StreamText(("tool", index), "output_tool_call", path, delta["partial_json"])]
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                return [StreamText(("text", index), "output", ("content_block", "text"), block["text"])]
        return []

    def prepare_upstream(self, view: RequestView) -> tuple[bytes, StreamFilter | None]:
        return view.body, None

    def response_parser(
        self, view: RequestView, streaming: bool, preview_chars: int, parse_limit: int
    ) -> ResponseParser:
        acc = AnthropicAccumulator(preview_chars)
        return StreamResponseParser(acc) if streaming else JsonResponseParser(acc, parse_limit)

    def render_error(self, err: GatewayError) -> bytes:
        return orjson.dumps(
            {"type": "error", "error": {"type": ERROR_TYPES[err.code], "message": err.message}}
        )

    def stream_error_event(self, err: GatewayError) -> bytes:
        return b"event: error\ndata: " + self.render_error(err) + b"\n\n"

    def rate_limit_headers(self, metric: str, limit: int, reset_s: int) -> dict[str, str]:
        unit = {"rpm": "requests", "tpm": "tokens"}.get(metric)
        if unit is None:
            return {}
        reset = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=reset_s)
        return {
            f"anthropic-ratelimit-{unit}-limit": str(limit),
            f"anthropic-ratelimit-{unit}-remaining": "0",
            f"anthropic-ratelimit-{unit}-reset": reset.isoformat().replace("+00:00", "Z"),
        }


class AnthropicAccumulator:
    """Messages, streamed (message_start … message_delta) or not."""

    def __init__(self, preview_chars: int) -> None:
        self.s = ResponseSummary()
        self.preview = PreviewText(preview_chars)
        self.usage: dict[str, Any] = {}

    def on_event(self, event: SSEEvent) -> None:
        data = loads(event.data)
        if data is None:
            return
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self.preview.add(delta.get("text"))
        elif kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            self.s.response_id = str(message.get("id") or "")
            self.s.model = str(message.get("model") or "")
            self._merge_usage(message.get("usage"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.s.finish_reason = str(delta["stop_reason"])
            self._merge_usage(data.get("usage"))
        elif kind == "error":
            self._error(data)

    def _merge_usage(self, usage: Any) -> None:
        # message_delta carries cumulative counts; a later value replaces an earlier one.
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def _error(self, body: dict[str, Any]) -> None:
        err = body.get("error")
        if isinstance(err, dict):
            self.s.error_type = str(err.get("type") or "error")
            self.s.error_message = str(err.get("message") or "")[:500]

    def on_body(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if body.get("type") == "error":
            self._error(body)
            return
        self.s.response_id = str(body.get("id") or "")
        self.s.model = str(body.get("model") or "")
        self.s.finish_reason = str(body.get("stop_reason") or "")
        for block in body.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "text":
                self.preview.add(block.get("text"))
        self._merge_usage(body.get("usage"))

    def summary(self) -> ResponseSummary:
        u = self.usage
        if u:
            # Anthropic's input_tokens excludes cache reads and writes; the audit's input is the total.
            base = as_int(u.get("input_tokens"))
            read = as_int(u.get("cache_read_input_tokens"))
            write = as_int(u.get("cache_creation_input_tokens"))
            total = None if base is None else base + (read or 0) + (write or 0)
            self.s.usage = Usage(
                input_tokens=total,
                output_tokens=as_int(u.get("output_tokens")),
                cache_read_tokens=read,
                cache_write_tokens=write,
            )
        self.s.preview = self.preview.text()
        return self.s
