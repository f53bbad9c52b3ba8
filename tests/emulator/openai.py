"""OpenAI: chat completions, embeddings, models, and the shell shared with the Responses API."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.emulator.content import (
    CREATED_AT,
    GeneratedText,
    TokenUsage,
    embedding_values,
    float32_base64,
    text_chars,
    tokens_for,
)
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
from tests.emulator.openai_errors import error_fields, required_model, stream_error_fields
from tests.emulator.openai_responses import create_response
from tests.emulator.sse import sse_event

SYSTEM_FINGERPRINT = "fp_emulator"
DEFAULT_EMBEDDING_DIMENSIONS = 1536

# (id, created, owned_by) of the models GET /v1/models lists and GET /v1/models/{id} knows.
MODEL_CATALOGUE: tuple[tuple[str, int, str], ...] = (
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("o4-mini", 1744225351, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
)


class OpenAIEmulator:
    """The OpenAI API under /openai: /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models."""

    name = "openai"
    json_content_type = "application/json"

    def __init__(self) -> None:
        self.routes: Sequence[Route] = (
            Route.of("POST", r"/v1/chat/completions", chat_completions),
            Route.of("POST", r"/v1/responses", create_response),
            Route.of("POST", r"/v1/embeddings", embeddings),
            Route.of("GET", r"/v1/models", list_models),
            Route.of("GET", r"/v1/models/(?P<model>[^/]+)", retrieve_model),
        )

    def admit(self, request: web.Request) -> ErrorReply | None:
        key = bearer_token(request)
        if key is None:
            return ErrorReply(401, Failure.MISSING_KEY)
        if key == REJECTED_API_KEY:
            return ErrorReply(401, Failure.REJECTED_KEY)
        return None

    def request_id(self, index: int) -> str:
        return f"req_{index:032x}"

    def response_headers(self, request_id: str, status: int) -> dict[str, str]:
        limited = status == 429
        return {
            "x-request-id": request_id,
            "openai-organization": "emulator-org",
            "openai-processing-ms": "7",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "0" if limited else "9999",
            "x-ratelimit-limit-tokens": "30000000",
            "x-ratelimit-remaining-tokens": "0" if limited else "29999000",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-reset-tokens": "0s",
        }

    def error_body(self, error: ErrorReply, request_id: str) -> bytes:
        # The real API pretty-prints error bodies with four spaces and ends them with a newline.
        return (json.dumps({"error": error_fields(error)}, indent=4) + "\n").encode()

    def encode_json(self, document: Mapping[str, Any]) -> bytes:
        return orjson.dumps(document)


def chat_usage(usage: TokenUsage) -> dict[str, Any]:
    """Chat Completions usage: completion tokens include reasoning, prompt tokens include cached."""
    completion = usage.output + usage.reasoning
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": completion,
        "total_tokens": usage.prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completions(exchange: Exchange) -> Reply:
    model = required_model(exchange)
    if isinstance(model, ErrorReply):
        return model
    messages = exchange.body.get("messages")
    if not isinstance(messages, list):
        return ErrorReply(400, Failure.INVALID_REQUEST, "Missing required parameter: 'messages'.")
    completion_id = "chatcmpl-" + exchange.digest[:29]
    prompt_chars = text_chars(messages)
    if exchange.body.get("stream") is True:
        options = exchange.body.get("stream_options") or {}
        return TextStream(
            ChatCompletionStream(
                completion_id=completion_id,
                model=model,
                prompt_chars=prompt_chars,
                include_usage=options.get("include_usage") is True,
                obfuscation="" if options.get("include_obfuscation") is False else exchange.digest[29:39],
            )
        )

    def render(text: GeneratedText) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text.text,
            "refusal": None,
            "annotations": [],
        }
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": CREATED_AT,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": chat_usage(TokenUsage.estimate(prompt_chars, text.length)),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    return TextDocument(render)


@dataclass(slots=True)
class ChatCompletionStream:
    """``chat.completion.chunk`` events, ``data:`` lines only, ending with ``data: [DONE]``.

    With ``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last chunk
    with empty ``choices`` carries the usage; without it no chunk has a ``usage`` key at all.
    """

    completion_id: str
    model: str
    prompt_chars: int
    include_usage: bool
    obfuscation: str  # "" when the client turned stream obfuscation off
    content_type: str = field(default="text/event-stream; charset=utf-8", init=False)

    def events(self, pieces: Iterable[str]) -> Iterator[bytes]:
        yield sse_event(self._chunk([self._choice({"role": "assistant", "content": "", "refusal": None})]))
        chars = 0
        for piece in pieces:
            chars += len(piece)
            yield sse_event(self._chunk([self._choice({"content": piece})]))
        yield sse_event(self._chunk([self._choice({}, finish_reason="stop")]))
        if self.include_usage:
            usage = chat_usage(TokenUsage.estimate(self.prompt_chars, chars))
            yield sse_event(self._chunk([], usage=usage))
        yield sse_event(b"[DONE]")

    def error_event(self, status: int) -> bytes:
        return sse_event({"error": stream_error_fields(status)})

    @staticmethod
    def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED_AT,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        if self.obfuscation:
            chunk["obfuscation"] = self.obfuscation
        return chunk


def embeddings(exchange: Exchange) -> Reply:
    model = required_model(exchange)
    if isinstance(model, ErrorReply):
        return model
    raw = exchange.body.get("input")
    if raw is None or raw == "" or raw == []:
        return ErrorReply(400, Failure.INVALID_REQUEST, "'input' is a required property")
    # One string or one token array is one input; a list of either is several.
    single = isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(t, int) for t in raw))
    inputs: list[Any] = [raw] if single else list(raw)
    dimensions = exchange.body.get("dimensions") or (
        3072 if model == "text-embedding-3-large" else DEFAULT_EMBEDDING_DIMENSIONS
    )
    as_base64 = exchange.body.get("encoding_format") == "base64"
    data = []
    for index in range(len(inputs)):
        values = embedding_values(exchange.digest, index, int(dimensions))
        vector: Any = float32_base64(values) if as_base64 else values
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(tokens_for(len(item)) if isinstance(item, str) else len(item) for item in inputs)
    return Document(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def list_models(exchange: Exchange) -> Reply:
    return Document({"object": "list", "data": [_model_object(*entry) for entry in MODEL_CATALOGUE]})


def retrieve_model(exchange: Exchange) -> Reply:
    for entry in MODEL_CATALOGUE:
        if entry[0] == exchange.params["model"]:
            return Document(_model_object(*entry))
    return ErrorReply(404, Failure.UNKNOWN_MODEL, exchange.params["model"])
