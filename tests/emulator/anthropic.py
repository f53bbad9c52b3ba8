"""Anthropic: the Messages API (plain and streamed), token counting and models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tests.emulator.content import GeneratedText, TokenUsage, text_chars
from tests.emulator.exchange import (
    REJECTED_API_KEY,
    Document,
    ErrorReply,
    Exchange,
    Failure,
    Reply,
    Route,
    TextDocument,
    TextStream,
    bearer_token,
)
from tests.emulator.sse import sse_event

# (id, display name, created_at) of the models GET /v1/models lists.
MODEL_CATALOGUE: tuple[tuple[str, str, str], ...] = (
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
)

# When the rate-limit windows shown in headers reset: fixed, like every timestamp here.
_RESET_AT = "2023-11-14T22:14:20Z"

# Error type and message the real API uses for a status when nothing more specific applies.
_STATUS_ERRORS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        400: ("invalid_request_error", "Invalid request (emulated)."),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
        403: ("permission_error", "Your API key does not have permission to use the specified resource."),
        404: ("not_found_error", "Not found"),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 4,000 requests per minute.",
        ),
        500: ("api_error", "Internal server error"),
        504: ("timeout_error", "Request timed out"),
        529: ("overloaded_error", "Overloaded"),
    }
)


def error_object(error: ErrorReply) -> dict[str, str]:
    """The inner ``error`` object: ``type`` follows the status, ``message`` the failure."""
    default_type = "api_error" if error.status >= 500 else "invalid_request_error"
    kind, message = _STATUS_ERRORS.get(error.status, (default_type, "Emulated error."))
    match error.failure:
        case Failure.MISSING_KEY:
            message = "x-api-key header is required"
        case Failure.REJECTED_KEY:
            message = "invalid x-api-key"
        case Failure.MALFORMED_JSON:
            message = "The request body is not valid JSON."
        case Failure.UNKNOWN_ROUTE:
            message = "Not Found"
        case Failure.UNKNOWN_MODEL:
            message = f"model: {error.detail}"
        case Failure.INVALID_REQUEST:
            message = error.detail
        case Failure.SCENARIO:
            pass
    return {"type": kind, "message": message}


class AnthropicEmulator:
    """The Anthropic API under /anthropic: /v1/messages, /v1/messages/count_tokens, /v1/models."""

    name = "anthropic"
    json_content_type = "application/json"

    def __init__(self) -> None:
        self.routes: Sequence[Route] = (
            Route.of("POST", r"/v1/messages", create_message),
            Route.of("POST", r"/v1/messages/count_tokens", count_tokens),
            Route.of("GET", r"/v1/models", list_models),
            Route.of("GET", r"/v1/models/(?P<model>[^/]+)", retrieve_model),
        )

    def admit(self, request: web.Request) -> ErrorReply | None:
        key = request.headers.get("x-api-key") or bearer_token(request)
        if not key:
            return ErrorReply(401, Failure.MISSING_KEY)
        if key == REJECTED_API_KEY:
            return ErrorReply(401, Failure.REJECTED_KEY)
        if "anthropic-version" not in request.headers:
            return ErrorReply(400, Failure.INVALID_REQUEST, "anthropic-version: header is required")
        return None

    def request_id(self, index: int) -> str:
        return f"req_{index:024d}"

    def response_headers(self, request_id: str, status: int) -> dict[str, str]:
        limited = status == 429
        headers = {
            "request-id": request_id,
            "anthropic-organization-id": "00000000-0000-4000-8000-00000000e000",
        }
        for window, limit in (
            ("requests", 4000),
            ("tokens", 2_000_000),
            ("input-tokens", 1_600_000),
            ("output-tokens", 400_000),
        ):
            prefix = f"anthropic-ratelimit-{window}"
            headers[f"{prefix}-limit"] = str(limit)
            headers[f"{prefix}-remaining"] = "0" if limited else str(limit - 1)
            headers[f"{prefix}-reset"] = _RESET_AT
        if limited:
            headers["retry-after"] = "1"
        return headers

    def error_body(self, error: ErrorReply, request_id: str) -> bytes:
        return orjson.dumps({"type": "error", "error": error_object(error), "request_id": request_id})

    def encode_json(self, document: Mapping[str, Any]) -> bytes:
        return orjson.dumps(document)


def message_usage(usage: TokenUsage, output_tokens: int) -> dict[str, Any]:
    """Messages usage: input_tokens excludes the tokens read from and written to the cache."""
    return {
        "input_tokens": usage.uncached_prompt,
        "cache_creation_input_tokens": usage.cache_creation,
        "cache_read_input_tokens": usage.cached,
        "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_creation, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _delta_usage(usage: TokenUsage) -> dict[str, int]:
    """message_delta usage: like the current API, it repeats the input counts beside the output."""
    return {
        "input_tokens": usage.uncached_prompt,
        "cache_creation_input_tokens": usage.cache_creation,
        "cache_read_input_tokens": usage.cached,
        "output_tokens": usage.output,
    }


def _check_message_request(exchange: Exchange, *, needs_max_tokens: bool) -> ErrorReply | None:
    body = exchange.body
    if not isinstance(body.get("model"), str):
        return ErrorReply(400, Failure.INVALID_REQUEST, "model: Field required")
    if not isinstance(body.get("messages"), list):
        return ErrorReply(400, Failure.INVALID_REQUEST, "messages: Field required")
    if needs_max_tokens and not isinstance(body.get("max_tokens"), int):
        return ErrorReply(400, Failure.INVALID_REQUEST, "max_tokens: Field required")
    return None


def _prompt_chars(body: Mapping[str, Any]) -> int:
    return text_chars(body.get("messages")) + text_chars(body.get("system"))


def create_message(exchange: Exchange) -> Reply:
    invalid = _check_message_request(exchange, needs_max_tokens=True)
    if invalid is not None:
        return invalid
    message_id = "msg_" + exchange.digest[:24]
    model = exchange.body["model"]
    prompt_chars = _prompt_chars(exchange.body)
    if exchange.body.get("stream") is True:
        return TextStream(MessageEventStream(message_id, model, prompt_chars))

    def render(text: GeneratedText) -> dict[str, Any]:
        usage = TokenUsage.estimate(prompt_chars, text.length)
        return {
            **_message_shell(message_id, model, [{"type": "text", "text": text.text}], "end_turn"),
            "usage": message_usage(usage, usage.output),
        }

    return TextDocument(render)


def _message_shell(
    message_id: str, model: str, content: list[Any], stop_reason: str | None
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }


@dataclass(slots=True)
class MessageEventStream:
    """``event: <type>`` + ``data:`` events from message_start to message_stop, with a ping."""

    message_id: str
    model: str
    prompt_chars: int
    content_type: str = field(default="text/event-stream; charset=utf-8", init=False)

    def events(self, pieces: Iterable[str]) -> Iterator[bytes]:
        start_usage = TokenUsage.estimate(self.prompt_chars, 0)
        message = {
            **_message_shell(self.message_id, self.model, [], None),
            "usage": message_usage(start_usage, 1),
        }
        yield _event({"type": "message_start", "message": message})
        yield _event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        )
        yield _event({"type": "ping"})
        chars = 0
        for piece in pieces:
            chars += len(piece)
            yield _event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            )
        yield _event({"type": "content_block_stop", "index": 0})
        yield _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": _delta_usage(TokenUsage.estimate(self.prompt_chars, chars)),
            }
        )
        yield _event({"type": "message_stop"})

    def error_event(self, status: int) -> bytes:
        return _event({"type": "error", "error": error_object(ErrorReply(status, Failure.SCENARIO))})


def _event(data: dict[str, Any]) -> bytes:
    return sse_event(data, event=data["type"])


def count_tokens(exchange: Exchange) -> Reply:
    invalid = _check_message_request(exchange, needs_max_tokens=False)
    if invalid is not None:
        return invalid
    return Document({"input_tokens": TokenUsage.estimate(_prompt_chars(exchange.body), 0).prompt})


def _model_object(model_id: str, display_name: str, created_at: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at,
        "lifecycle": "active",
    }


def list_models(exchange: Exchange) -> Reply:
    models = [_model_object(*entry) for entry in MODEL_CATALOGUE]
    return Document(
        {"data": models, "has_more": False, "first_id": models[0]["id"], "last_id": models[-1]["id"]}
    )


def retrieve_model(exchange: Exchange) -> Reply:
    for entry in MODEL_CATALOGUE:
        if entry[0] == exchange.params["model"]:
            return Document(_model_object(*entry))
    return ErrorReply(404, Failure.UNKNOWN_MODEL, exchange.params["model"])
