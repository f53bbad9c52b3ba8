"""Google Gemini (Generative Language API) wire format."""

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
    value_target,
)
from gateway.sse import SSEEvent

# POST /v1beta/models/{model}:{method} (also v1, v1alpha, tunedModels/…)
_MODEL_METHOD = re.compile(r"^/v1(?:alpha|beta)?\d*/((?:models|tunedModels)/[^/:]+):([A-Za-z]+)$")
_LIST_MODELS = re.compile(r"^/v1(?:alpha|beta)?\d*/models$")
METHODS: dict[str, Endpoint] = {
    "generateContent": Endpoint("generate_content", "generate_content"),
    "streamGenerateContent": Endpoint("stream_generate_content", "generate_content"),
    "countTokens": Endpoint("count_tokens", ""),
    "embedContent": Endpoint("embed_content", "embeddings"),
    "batchEmbedContents": Endpoint("batch_embed_contents", "embeddings"),
}
MODELS_LIST = Endpoint("models.list", "", json_body=False)

# (HTTP status, google.rpc status) per gateway error code.
ERROR_STATUSES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "INVALID_ARGUMENT",
    ErrorCode.AUTHENTICATION: "UNAUTHENTICATED",
    ErrorCode.PERMISSION_DENIED: "PERMISSION_DENIED",
    ErrorCode.NOT_FOUND: "NOT_FOUND",
    ErrorCode.REQUEST_TOO_LARGE: "INVALID_ARGUMENT",
    ErrorCode.RATE_LIMITED: "RESOURCE_EXHAUSTED",
    ErrorCode.BUDGET_EXCEEDED: "RESOURCE_EXHAUSTED",
    ErrorCode.INTERNAL: "INTERNAL",
    ErrorCode.UPSTREAM_UNREACHABLE: "UNAVAILABLE",
    ErrorCode.UNAVAILABLE: "UNAVAILABLE",
    ErrorCode.UPSTREAM_TIMEOUT: "DEADLINE_EXCEEDED",
}
_ROLES = {"user": "user", "model": "assistant", "function": "tool_result", "tool": "tool_result"}


_GENERATION_LIMIT = (("generationConfig", "maxOutputTokens"), ("generation_config", "max_output_tokens"))
OUTPUT_LIMIT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "generate_content": _GENERATION_LIMIT,
    "stream_generate_content": _GENERATION_LIMIT,
}


class GeminiAdapter:
    kind = "gemini"
    gen_ai_provider = "gcp.gemini"
    default_base_url = "https://generativelanguage.googleapis.com"

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "x-goog-api-key", secret

    def output_limit_fields(self, operation: str) -> tuple[tuple[str, ...], ...]:
        return OUTPUT_LIMIT_FIELDS.get(operation, ())

    def classify(self, method: str, path: str) -> Endpoint:
        if method == "POST":
            m = _MODEL_METHOD.match(path)
            if m is not None:
                return METHODS.get(m.group(2), OPAQUE)
        elif method == "GET" and _LIST_MODELS.match(path):
            return MODELS_LIST
        return OPAQUE

    def parse_request(self, method: str, path: str, query: str, body: bytes) -> RequestView:
        endpoint = self.classify(method, path)
        view = RequestView(self, method, path, query, body, endpoint)
        m = _MODEL_METHOD.match(path)
        if m is not None:
            view.model = m.group(1).split("/", 1)[1]
        view.stream = endpoint.operation == "stream_generate_content"
        if endpoint.json_body:
            data = load_json_object(body)
            view.json = data
            raw_config = data.get("generationConfig")
            config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
            view.params = {
                "max_tokens": config.get("maxOutputTokens"),
                "temperature": config.get("temperature"),
                "top_p": config.get("topP"),
            }
        return view

    def scan_targets(self, body: Mapping[str, Any]) -> Iterator[TextTarget]:
        for name in ("systemInstruction", "system_instruction"):
            system = body.get(name)
            if isinstance(system, dict):
                yield from _parts_targets(system.get("parts"), (name, "parts"), "system", "system")
        contents = body.get("contents")
        for i, content in enumerate(contents if isinstance(contents, list) else ()):
            if isinstance(content, dict):
                location = _ROLES.get(str(content.get("role") or "user"), "user")
                path: JsonPath = ("contents", i, "parts")
                yield from _parts_targets(content.get("parts"), path, location, "tool_call")
        content = body.get("content")
        if isinstance(content, dict):  # embedContent
            yield from _parts_targets(content.get("parts"), ("content", "parts"), "user", "tool_call")
        requests = body.get("requests")  # batchEmbedContents
        for i, request in enumerate(requests if isinstance(requests, list) else ()):
            parts = dig(request, "content", "parts")
            yield from _parts_targets(parts, ("requests", i, "content", "parts"), "user", "tool_call")
        tools = body.get("tools")
        for i in range(len(tools) if isinstance(tools, list) else 0):
            yield from value_target("tool_definition", tools, i, ("tools",))

    def output_targets(self, body: Any) -> Iterator[TextTarget]:
        # streamGenerateContent without alt=sse answers a JSON array of responses
        items = body if isinstance(body, list) else [body]
        for n, item in enumerate(items):
            prefix: JsonPath = (n,) if isinstance(body, list) else ()
            candidates = item.get("candidates") if isinstance(item, dict) else None
            for i, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
                parts = dig(candidate, "content", "parts")
                path = (*prefix, "candidates", i, "content", "parts")
                yield from _parts_targets(parts, path, "output", "output_tool_call", skip_thoughts=True)

    def stream_texts(self, data: Mapping[str, Any]) -> list[StreamText]:
        texts: list[StreamText] = []
        candidates = data.get("candidates")
        for i, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
            index = candidate.get("index", i) if isinstance(candidate, dict) else i
            path: JsonPath = ("candidates", i, "content", "parts")
            parts = dig(candidate, "content", "parts")
            for t in _parts_targets(parts, path, "output", "output_tool_call", skip_thoughts=True):
                # text parts continue the candidate's text; a function call arrives whole
                delta = not t.structured and t.location == "output"
                texts.append(StreamText(("text", index), t.location, t.path, t.text, delta, t.structured))
        return texts

    def prepare_upstream(self, view: RequestView) -> tuple[bytes, StreamFilter | None]:
        return view.body, None

    def response_parser(
        self, view: RequestView, streaming: bool, preview_chars: int, parse_limit: int
    ) -> ResponseParser:
        acc = GeminiAccumulator(preview_chars)
        return StreamResponseParser(acc) if streaming else JsonResponseParser(acc, parse_limit)

    def render_error(self, err: GatewayError) -> bytes:
        return orjson.dumps(
            {"error": {"code": err.status, "message": err.message, "status": ERROR_STATUSES[err.code]}}
        )

    def stream_error_event(self, err: GatewayError) -> bytes:
        return b"data: " + self.render_error(err) + b"\r\n\r\n"

    def rate_limit_headers(self, metric: str, limit: int, reset_s: int) -> dict[str, str]:
        return {}  # the Gemini API sends no rate-limit headers; retry-after is set for every 429


class GeminiAccumulator:
    """GenerateContentResponse objects, one per SSE event or as a whole (or a JSON array of them)."""

    def __init__(self, preview_chars: int) -> None:
        self.s = ResponseSummary()
        self.preview = PreviewText(preview_chars)

    def on_event(self, event: SSEEvent) -> None:
        data = loads(event.data)
        if data is not None:
            self._response(data)

    def on_body(self, body: Any) -> None:
        for item in body if isinstance(body, list) else [body]:
            if isinstance(item, dict):
                self._response(item)

    def _response(self, data: dict[str, Any]) -> None:
        s = self.s
        if isinstance(data.get("error"), dict):
            s.error_type = str(data["error"].get("status") or "error")
            s.error_message = str(data["error"].get("message") or "")[:500]
            return
        s.response_id = s.response_id or str(data.get("responseId") or "")
        s.model = str(data.get("modelVersion") or s.model)
        for candidate in data.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            for part in dig(candidate, "content", "parts") or ():
                if isinstance(part, dict) and not part.get("thought"):
                    self.preview.add(part.get("text"))
            if candidate.get("finishReason"):
                s.finish_reason = str(candidate["finishReason"])
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            s.usage = _usage(usage)

    def summary(self) -> ResponseSummary:
        self.s.preview = self.preview.text()
        return self.s


def _parts_targets(
    parts: Any, path: JsonPath, text_location: str, call_location: str, skip_thoughts: bool = False
) -> Iterator[TextTarget]:
    """Text, function-call and function-response parts of one Content."""
    for j, part in enumerate(parts if isinstance(parts, list) else ()):
        if not isinstance(part, dict) or (skip_thoughts and part.get("thought")):
            continue
        yield from value_target(text_location, part, "text", (*path, j))
        for name in ("functionCall", "function_call"):
            yield from value_target(call_location, part.get(name), "args", (*path, j, name))
        for name in ("functionResponse", "function_response"):
            yield from value_target("tool_result", part.get(name), "response", (*path, j, name))


def _usage(u: dict[str, Any]) -> Usage:
    """Gemini reports thinking tokens apart from candidates; the audit's output includes them."""
    prompt = as_int(u.get("promptTokenCount"))
    tool_prompt = as_int(u.get("toolUsePromptTokenCount"))
    candidates = as_int(u.get("candidatesTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    return Usage(
        input_tokens=None if prompt is None else prompt + (tool_prompt or 0),
        output_tokens=output,
        cache_read_tokens=as_int(u.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )
