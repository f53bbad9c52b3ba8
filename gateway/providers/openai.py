"""OpenAI wire format (also any OpenAI-compatible upstream: vLLM, Azure, …)."""

from __future__ import annotations

import re
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
    dig,
    loads,
    text_targets,
    value_target,
)
from gateway.sse import SSEEvent, SSEFramer, parse_event

ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/chat/completions"): Endpoint("chat.completions", "chat"),
    ("POST", "/v1/responses"): Endpoint("responses", "chat"),
    ("POST", "/v1/embeddings"): Endpoint("embeddings", "embeddings"),
    ("POST", "/v1/completions"): Endpoint("completions", "text_completion"),
    ("GET", "/v1/models"): Endpoint("models.list", "", json_body=False),
}
_MODEL_PATH = re.compile(r"^/v1/models/[^/]+$")

# (error.type, error.code) per gateway error code, as the OpenAI API spells them.
ERROR_SHAPES: dict[ErrorCode, tuple[str, str | None]] = {
    ErrorCode.INVALID_REQUEST: ("invalid_request_error", None),
    ErrorCode.AUTHENTICATION: ("invalid_request_error", "invalid_api_key"),
    ErrorCode.PERMISSION_DENIED: ("permission_error", "permission_denied"),
    ErrorCode.NOT_FOUND: ("invalid_request_error", "not_found"),
    ErrorCode.REQUEST_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorCode.RATE_LIMITED: ("requests", "rate_limit_exceeded"),
    ErrorCode.BUDGET_EXCEEDED: ("insufficient_quota", "insufficient_quota"),
    ErrorCode.INTERNAL: ("server_error", None),
    ErrorCode.UPSTREAM_UNREACHABLE: ("server_error", "upstream_unreachable"),
    ErrorCode.UNAVAILABLE: ("server_error", "service_unavailable"),
    ErrorCode.UPSTREAM_TIMEOUT: ("timeout", "upstream_timeout"),
}
_SYSTEM_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# `"usage":null` as a member of the chunk object, whether or not other members follow it.
_USAGE_NULL_MEMBER = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


# Where each operation caps output tokens: candidate JSON paths, the first one present is used
# (else the first is set). `max_tokens` is deprecated for chat and refused by reasoning models.
OUTPUT_LIMIT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "chat.completions": (("max_completion_tokens",), ("max_tokens",)),
    "responses": (("max_output_tokens",),),
    "completions": (("max_tokens",),),
}


class OpenAIAdapter:
    kind = "openai"
    gen_ai_provider = "openai"
    default_base_url = "https://api.openai.com"

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "Authorization", f"Bearer {secret}"

    def output_limit_fields(self, operation: str) -> tuple[tuple[str, ...], ...]:
        return OUTPUT_LIMIT_FIELDS.get(operation, ())

    def classify(self, method: str, path: str) -> Endpoint:
        endpoint = ENDPOINTS.get((method, path))
        if endpoint is not None:
            return endpoint
        if method == "GET" and _MODEL_PATH.match(path):
            return Endpoint("models.retrieve", "", json_body=False)
        return OPAQUE

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
                "max_tokens": data.get("max_completion_tokens")
                or data.get("max_tokens")
                or data.get("max_output_tokens"),
                "temperature": data.get("temperature"),
                "top_p": data.get("top_p"),
            }
        elif path.startswith("/v1/models/"):
            view.model = path.rsplit("/", 1)[1]
        return view

    def scan_targets(self, body: Mapping[str, Any]) -> Iterator[TextTarget]:
        messages = body.get("messages")
        if isinstance(messages, list):
            yield from _chat_targets(messages)
        yield from value_target("system", body, "instructions", ())
        items = body.get("input")
        if isinstance(items, str):
            yield from value_target("user", body, "input", ())
        elif isinstance(items, list):
            yield from _responses_targets(items)
        if isinstance(body.get("prompt"), str):
            yield from value_target("user", body, "prompt", ())
        tools = body.get("tools")
        for i in range(len(tools) if isinstance(tools, list) else 0):
            yield from value_target("tool_definition", tools, i, ("tools",))

    def output_targets(self, body: Any) -> Iterator[TextTarget]:
        if not isinstance(body, dict):
            return
        choices = body.get("choices")
        for i, choice in enumerate(choices if isinstance(choices, list) else ()):
            if not isinstance(choice, dict):
                continue
            path: JsonPath = ("choices", i)
            message = choice.get("message")
            if isinstance(message, dict):
                yield from text_targets("output", message.get("content"), (*path, "message", "content"))
                yield from _tool_call_targets("output_tool_call", message, (*path, "message"))
            yield from value_target("output", choice, "text", path)  # legacy completions
        output = body.get("output") if body.get("object") == "response" else None
        for i, item in enumerate(output if isinstance(output, list) else ()):
            yield from _response_item_targets(item, ("output", i))

    def stream_texts(self, data: Mapping[str, Any]) -> list[StreamText]:
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            return _responses_stream_texts(kind, data)
        texts: list[StreamText] = []
        choices = data.get("choices")
        for i, choice in enumerate(choices if isinstance(choices, list) else ()):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", i)
            if isinstance(delta.get("content"), str) and delta["content"]:
                path: JsonPath = ("choices", i, "delta", "content")
                texts.append(StreamText(("text", index), "output", path, delta["content"]))
            calls = delta.get("tool_calls")
            for j, call in enumerate(calls if isinstance(calls, list) else ()):
                arguments = dig(call, "function", "arguments")
                if isinstance(arguments, str) and arguments:
                    channel = ("tool", index, call.get("index", j))
                    path = ("choices", i, "delta", "tool_calls", j, "function", "arguments")
                    texts.append(StreamText(channel, "output_tool_call", path, arguments))
        return texts

    def prepare_upstream(self, view: RequestView) -> tuple[bytes, StreamFilter | None]:
        if view.endpoint.operation != "chat.completions" or not view.stream or view.json is None:
            return view.body, None
        options = view.json.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return view.body, None
        # The client did not ask for usage; ask upstream for it and strip it on the way back,
        # so the client's stream stays exactly what it requested.
        if options is None and view.body.lstrip().startswith(b"{"):
            head = view.body.index(b"{") + 1
            rest = view.body[head:].lstrip()
            sep = b"" if rest.startswith(b"}") else b","
            body = view.body[:head] + b'"stream_options":{"include_usage":true}' + sep + view.body[head:]
        else:
            patched = dict(view.json)
            patched["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            body = orjson.dumps(patched)
        return body, UsageChunkStripper()

    def response_parser(
        self, view: RequestView, streaming: bool, preview_chars: int, parse_limit: int
    ) -> ResponseParser:
        acc = OpenAIAccumulator(preview_chars)
        return StreamResponseParser(acc) if streaming else JsonResponseParser(acc, parse_limit)

    def render_error(self, err: GatewayError) -> bytes:
        etype, code = ERROR_SHAPES[err.code]
        return orjson.dumps({"error": {"message": err.message, "type": etype, "param": None, "code": code}})

    def stream_error_event(self, err: GatewayError) -> bytes:
        return b"data: " + self.render_error(err) + b"\n\n"

    def rate_limit_headers(self, metric: str, limit: int, reset_s: int) -> dict[str, str]:
        unit = {"rpm": "requests", "tpm": "tokens"}.get(metric)
        if unit is None:
            return {}
        return {
            f"x-ratelimit-limit-{unit}": str(limit),
            f"x-ratelimit-remaining-{unit}": "0",
            f"x-ratelimit-reset-{unit}": f"{reset_s}s",
        }


def _chat_targets(messages: list[Any]) -> Iterator[TextTarget]:
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        location = "tool_result" if role in ("tool", "function") else _SYSTEM_ROLES.get(str(role), "user")
        yield from text_targets(location, msg.get("content"), ("messages", i, "content"))
        yield from _tool_call_targets("tool_call", msg, ("messages", i))


def _tool_call_targets(location: str, message: dict[str, Any], path: JsonPath) -> Iterator[TextTarget]:
    calls = message.get("tool_calls")
    for j, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        yield from value_target(location, function, "arguments", (*path, "tool_calls", j, "function"))


def _responses_targets(items: list[Any]) -> Iterator[TextTarget]:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call_output":
            yield from value_target("tool_result", item, "output", ("input", i))
        elif kind == "function_call":
            yield from value_target("tool_call", item, "arguments", ("input", i))
        elif "role" in item:
            location = _SYSTEM_ROLES.get(str(item.get("role")), "user")
            yield from text_targets(location, item.get("content"), ("input", i, "content"))


def _response_item_targets(item: Any, path: JsonPath) -> Iterator[TextTarget]:
    """A Responses output item: message text parts, or a function call's arguments."""
    if not isinstance(item, dict):
        return
    if item.get("type") == "function_call":
        yield from value_target("output_tool_call", item, "arguments", path)
        return
    content = item.get("content")
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict) and part.get("type") == "output_text":
            yield from value_target("output", part, "text", (*path, "content", j))


def _responses_stream_texts(kind: str, data: Mapping[str, Any]) -> list[StreamText]:
    """Deltas of a Responses stream, and the events that repeat whole texts once they are done."""
    output_index = data.get("output_index", 0)
    if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
        channel = ("text", output_index, data.get("content_index", 0))
        return [StreamText(channel, "output", ("delta",), data["delta"])]
    if kind == "response.function_call_arguments.delta" and isinstance(data.get("delta"), str):
        return [StreamText(("tool", output_index), "output_tool_call", ("delta",), data["delta"])]
    whole: list[TextTarget] = []
    if kind == "response.output_text.done":
        whole += value_target("output", data, "text", ())
    elif kind == "response.function_call_arguments.done":
        whole += value_target("output_tool_call", data, "arguments", ())
    elif kind == "response.content_part.done" and dig(data, "part", "type") == "output_text":
        whole += value_target("output", data["part"], "text", ("part",))
    elif kind == "response.output_item.done":
        whole += _response_item_targets(data.get("item"), ("item",))
    elif kind in ("response.completed", "response.incomplete", "response.failed"):
        output = dig(data, "response", "output")
        for i, item in enumerate(output if isinstance(output, list) else ()):
            whole += _response_item_targets(item, ("response", "output", i))
    return [StreamText((), t.location, t.path, t.text, delta=False) for t in whole]


def _usage(raw: Any) -> Usage:
    """OpenAI usage (chat, Responses or embeddings); input includes cached, output includes reasoning."""
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        input_tokens=as_int(raw.get("prompt_tokens", raw.get("input_tokens"))),
        output_tokens=as_int(raw.get("completion_tokens", raw.get("output_tokens"))),
        cache_read_tokens=as_int(
            dig(raw, "prompt_tokens_details", "cached_tokens")
            or dig(raw, "input_tokens_details", "cached_tokens")
        ),
        reasoning_tokens=as_int(
            dig(raw, "completion_tokens_details", "reasoning_tokens")
            or dig(raw, "output_tokens_details", "reasoning_tokens")
        ),
    )


class OpenAIAccumulator:
    """Chat completions, Responses and embeddings, streamed or not."""

    def __init__(self, preview_chars: int) -> None:
        self.s = ResponseSummary()
        self.preview = PreviewText(preview_chars)

    def on_event(self, event: SSEEvent) -> None:
        if event.data.startswith(b"[DONE]"):
            return
        data = loads(event.data)
        if data is None:
            return
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            self._responses_event(kind, data)
        elif ("error" in data and isinstance(data["error"], dict)) or kind == "error":
            nested = data.get("error")
            err: dict[str, Any] = nested if isinstance(nested, dict) else data
            self.s.error_type = str(err.get("type") or err.get("code") or "error")
            self.s.error_message = str(err.get("message") or "")[:500]
        else:
            self._chunk(data)

    def _chunk(self, data: dict[str, Any]) -> None:
        s = self.s
        s.response_id = s.response_id or str(data.get("id") or "")
        s.model = s.model or str(data.get("model") or "")
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            self.preview.add(dig(choice, "delta", "content"))
            if choice.get("finish_reason"):
                s.finish_reason = str(choice["finish_reason"])
        if isinstance(data.get("usage"), dict):
            s.usage = _usage(data["usage"])

    def _responses_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "response.output_text.delta":
            self.preview.add(data.get("delta"))
            return
        response = data.get("response")
        if isinstance(response, dict):
            self.s.response_id = str(response.get("id") or self.s.response_id)
            self.s.model = str(response.get("model") or self.s.model)
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self._responses_final(response)

    def _responses_final(self, response: dict[str, Any]) -> None:
        self.s.usage = _usage(response.get("usage"))
        reason = dig(response, "incomplete_details", "reason")
        self.s.finish_reason = str(reason or response.get("status") or "")
        error = response.get("error")
        if isinstance(error, dict):
            self.s.error_type = str(error.get("code") or "error")
            self.s.error_message = str(error.get("message") or "")[:500]

    def on_body(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        s = self.s
        if isinstance(body.get("error"), dict):
            s.error_type = str(body["error"].get("type") or body["error"].get("code") or "error")
            s.error_message = str(body["error"].get("message") or "")[:500]
            return
        s.response_id = str(body.get("id") or "")
        s.model = str(body.get("model") or "")
        if body.get("object") == "response":
            for item in body.get("output") or ():
                for part in dig(item, "content") or ():
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        self.preview.add(part.get("text"))
            self._responses_final(body)
            return
        for choice in body.get("choices") or ():
            if isinstance(choice, dict):
                self.preview.add(dig(choice, "message", "content") or choice.get("text"))
                if choice.get("finish_reason"):
                    s.finish_reason = s.finish_reason or str(choice["finish_reason"])
        s.usage = _usage(body.get("usage"))

    def summary(self) -> ResponseSummary:
        self.s.preview = self.preview.text()
        return self.s


class UsageChunkStripper:
    """Removes what `stream_options.include_usage` added to a stream the client did not ask it of.

    With include_usage, OpenAI appends `"usage":null` to every chunk and sends one extra
    chunk with `"choices":[]` and the usage object before `[DONE]`. Both are removed here,
    event by event; every other byte is relayed unchanged.
    """

    __slots__ = ("_framer",)

    def __init__(self) -> None:
        self._framer = SSEFramer()

    def filter(self, chunk: bytes) -> bytes:
        out = []
        for raw, complete in self._framer.feed(chunk):
            out.append(self._rewrite(raw) if complete else raw)
        return b"".join(out)

    def flush(self) -> bytes:
        return self._framer.flush()

    @staticmethod
    def _rewrite(raw: bytes) -> bytes:
        if b'"usage"' not in raw:
            return raw
        event = parse_event(raw)
        if event is None or event.data.startswith(b"[DONE]"):
            return raw
        data = loads(event.data)
        if data is None:
            return raw
        if data.get("choices") == [] and isinstance(data.get("usage"), dict):
            return b""
        if "usage" in data and data["usage"] is None:
            lines = raw.split(b"\n")
            for i, line in enumerate(lines):
                if line.startswith(b"data:"):
                    lines[i] = _USAGE_NULL_MEMBER.sub(b"", line, count=1)
            return b"\n".join(lines)
        return raw
