"""Google Gemini (Generative Language API): generate, stream, count tokens, embed, models."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tests.emulator.content import GeneratedText, TokenUsage, embedding_values, text_chars
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

_GENERATE = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
_EMBED = ("embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent")

# (id, display name, input token limit, output token limit, supported methods)
MODEL_CATALOGUE: tuple[tuple[str, str, int, int, tuple[str, ...]], ...] = (
    ("gemini-2.5-pro", "Gemini 2.5 Pro", 1_048_576, 65_536, _GENERATE),
    ("gemini-2.5-flash", "Gemini 2.5 Flash", 1_048_576, 65_536, _GENERATE),
    ("gemini-2.0-flash", "Gemini 2.0 Flash", 1_048_576, 8_192, _GENERATE),
    ("gemini-embedding-001", "Gemini Embedding 001", 2_048, 1, _EMBED),
    ("text-embedding-004", "Text Embedding 004", 2_048, 1, _EMBED),
)

# google.rpc canonical codes by HTTP status, as Google APIs pair them.
_CANONICAL_STATUS: Mapping[int, str] = MappingProxyType(
    {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ABORTED",
        412: "FAILED_PRECONDITION",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "UNIMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
)

_STATUS_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        400: "Request contains an invalid argument.",
        401: "Request had invalid authentication credentials.",
        403: "The caller does not have permission",
        404: "Requested entity was not found.",
        429: "You exceeded your current quota, please check your plan and billing details.",
        500: "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
        504: "Deadline expired before operation could complete.",
    }
)

_MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_API_KEY_INVALID_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]


def error_document(error: ErrorReply) -> dict[str, Any]:
    """``{"error": {"code", "message", "status"}}``, plus ``details`` where Google adds them."""
    message = _STATUS_MESSAGES.get(error.status, "Emulated error.")
    details: list[dict[str, Any]] | None = None
    match error.failure:
        case Failure.MISSING_KEY:
            message = _MISSING_KEY_MESSAGE
        case Failure.REJECTED_KEY:
            message, details = "API key not valid. Please pass a valid API key.", _API_KEY_INVALID_DETAILS
        case Failure.MALFORMED_JSON:
            message = "Invalid JSON payload received. Unexpected token."
        case Failure.UNKNOWN_ROUTE:
            message = f"Method not found: {error.detail}."
        case Failure.UNKNOWN_MODEL:
            message = (
                f"{error.detail}, or is not supported for this method. "
                "Call ListModels to see the list of available models and their supported methods."
            )
        case Failure.INVALID_REQUEST:
            message = error.detail
        case Failure.SCENARIO:
            pass
    body: dict[str, Any] = {
        "code": error.status,
        "message": message,
        "status": _CANONICAL_STATUS.get(error.status, "UNKNOWN"),
    }
    if details:
        body["details"] = details
    return {"error": body}


_MODEL_PATH = r"/(?P<version>v1|v1beta)/models/(?P<model>[^/:]+)"


class GeminiEmulator:
    """The Gemini API under /gemini: /v1beta/models/{model}:generateContent and friends."""

    name = "gemini"
    json_content_type = "application/json; charset=UTF-8"

    def __init__(self) -> None:
        self.routes: Sequence[Route] = (
            Route.of("POST", _MODEL_PATH + ":generateContent", generate_content),
            Route.of("POST", _MODEL_PATH + ":streamGenerateContent", stream_generate_content),
            Route.of("POST", _MODEL_PATH + ":countTokens", count_tokens),
            Route.of("POST", _MODEL_PATH + ":embedContent", embed_content),
            Route.of("POST", _MODEL_PATH + ":batchEmbedContents", batch_embed_contents),
            Route.of("GET", r"/(?P<version>v1|v1beta)/models", list_models),
            Route.of("GET", _MODEL_PATH, retrieve_model),
        )

    def admit(self, request: web.Request) -> ErrorReply | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or bearer_token(request)
        if not key:
            return ErrorReply(403, Failure.MISSING_KEY)
        if key == REJECTED_API_KEY:
            # Google answers a bad API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not 401.
            return ErrorReply(400, Failure.REJECTED_KEY)
        return None

    def request_id(self, index: int) -> str:
        return f"emu{index:017d}"

    def response_headers(self, request_id: str, status: int) -> dict[str, str]:
        # Google sends no request-id header; the body's responseId identifies a generation.
        return {
            "Vary": "Origin, X-Origin, Referer",
            "Server-Timing": "gfet4t7; dur=7",
            "X-XSS-Protection": "0",
            "X-Frame-Options": "SAMEORIGIN",
            "X-Content-Type-Options": "nosniff",
        }

    def error_body(self, error: ErrorReply, request_id: str) -> bytes:
        return self.encode_json(error_document(error))

    def encode_json(self, document: Mapping[str, Any]) -> bytes:
        # Google pretty-prints JSON bodies with two-space indentation.
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def _prompt_chars(body: Mapping[str, Any]) -> int:
    return text_chars(body.get("contents")) + text_chars(body.get("systemInstruction"))


def usage_metadata(usage: TokenUsage) -> dict[str, Any]:
    """Full usageMetadata: totalTokenCount = prompt (which includes cached) + candidates + thoughts."""
    return {
        "promptTokenCount": usage.prompt,
        "candidatesTokenCount": usage.output,
        "totalTokenCount": usage.prompt + usage.output + usage.reasoning,
        "cachedContentTokenCount": usage.cached,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": usage.cached}],
        "thoughtsTokenCount": usage.reasoning,
    }


def _response(
    text: str, finished: bool, usage: dict[str, Any], model: str, response_id: str
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finished:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id,
    }


def _check_contents(exchange: Exchange) -> ErrorReply | None:
    if not isinstance(exchange.body.get("contents"), list):
        return ErrorReply(
            400, Failure.INVALID_REQUEST, "* GenerateContentRequest.contents: contents is not specified"
        )
    return None


def generate_content(exchange: Exchange) -> Reply:
    invalid = _check_contents(exchange)
    if invalid is not None:
        return invalid
    model, prompt_chars = exchange.params["model"], _prompt_chars(exchange.body)
    response_id = exchange.digest[:22]

    def render(text: GeneratedText) -> dict[str, Any]:
        usage = usage_metadata(TokenUsage.estimate(prompt_chars, text.length))
        return _response(text.text, True, usage, model, response_id)

    return TextDocument(render)


def stream_generate_content(exchange: Exchange) -> Reply:
    invalid = _check_contents(exchange)
    if invalid is not None:
        return invalid
    return TextStream(
        GenerateContentStream(
            model=exchange.params["model"],
            response_id=exchange.digest[:22],
            prompt_chars=_prompt_chars(exchange.body),
            sse=exchange.query.get("alt") == "sse",
        )
    )


@dataclass(slots=True)
class GenerateContentStream:
    """GenerateContentResponse chunks; the last carries finishReason and the final usageMetadata.

    With ``alt=sse`` each chunk is ``data: {json}`` followed by a blank line, lines ending in CRLF
    as Google sends them; without it the chunks form one JSON array written incrementally.
    """

    model: str
    response_id: str
    prompt_chars: int
    sse: bool
    content_type: str = field(init=False)
    _sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.content_type = "text/event-stream" if self.sse else "application/json; charset=UTF-8"

    def events(self, pieces: Iterable[str]) -> Iterator[bytes]:
        remaining = iter(pieces)
        previous = next(remaining, "")
        chars = len(previous)
        # Look one piece ahead, so the last piece goes out in the final chunk with finishReason.
        for piece in remaining:
            yield self._chunk(_response(previous, False, self._usage(chars), self.model, self.response_id))
            previous = piece
            chars += len(piece)
        yield self._chunk(_response(previous, True, self._usage(chars), self.model, self.response_id))
        if not self.sse:
            yield b"]"

    def error_event(self, status: int) -> bytes:
        return self._chunk(error_document(ErrorReply(status, Failure.SCENARIO)))

    def _usage(self, chars: int) -> dict[str, Any]:
        # Like Google's, every chunk's usageMetadata is cumulative: the last one is the total.
        return usage_metadata(TokenUsage.estimate(self.prompt_chars, chars))

    def _chunk(self, document: dict[str, Any]) -> bytes:
        first, self._sent = self._sent == 0, self._sent + 1
        if self.sse:
            # Google's SSE payloads are one line with a space after each colon but none after commas.
            payload = json.dumps(document, separators=(",", ": "), ensure_ascii=False).encode()
            return sse_event(payload, separator=b"\r\n")
        return (b"[" if first else b",\r\n") + orjson.dumps(document, option=orjson.OPT_INDENT_2)


def count_tokens(exchange: Exchange) -> Reply:
    request = exchange.body.get("generateContentRequest") or exchange.body
    tokens = TokenUsage.estimate(_prompt_chars(request), 0).prompt
    return Document(
        {"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
    )


def _embedding(exchange: Exchange, request: Mapping[str, Any], index: int) -> dict[str, Any]:
    default = 3072 if "gemini-embedding" in exchange.params["model"] else 768
    dimensions = int(request.get("outputDimensionality") or default)
    return {"values": embedding_values(exchange.digest, index, dimensions)}


def embed_content(exchange: Exchange) -> Reply:
    if not isinstance(exchange.body.get("content"), dict):
        return ErrorReply(
            400, Failure.INVALID_REQUEST, "* EmbedContentRequest.content: content is not specified"
        )
    return Document({"embedding": _embedding(exchange, exchange.body, 0)})


def batch_embed_contents(exchange: Exchange) -> Reply:
    requests = exchange.body.get("requests")
    if not isinstance(requests, list) or not requests:
        return ErrorReply(
            400, Failure.INVALID_REQUEST, "* BatchEmbedContentsRequest.requests: requests is empty"
        )
    return Document({"embeddings": [_embedding(exchange, request, i) for i, request in enumerate(requests)]})


def _model_object(entry: tuple[str, str, int, int, tuple[str, ...]]) -> dict[str, Any]:
    model_id, display_name, input_limit, output_limit, methods = entry
    return {
        "name": f"models/{model_id}",
        "version": "001",
        "displayName": display_name,
        "description": f"{display_name} (emulated)",
        "inputTokenLimit": input_limit,
        "outputTokenLimit": output_limit,
        "supportedGenerationMethods": list(methods),
    }


def list_models(exchange: Exchange) -> Reply:
    return Document({"models": [_model_object(entry) for entry in MODEL_CATALOGUE]})


def retrieve_model(exchange: Exchange) -> Reply:
    for entry in MODEL_CATALOGUE:
        if entry[0] == exchange.params["model"]:
            return Document(_model_object(entry))
    detail = f"models/{exchange.params['model']} is not found for API version {exchange.params['version']}"
    return ErrorReply(404, Failure.UNKNOWN_MODEL, detail)
