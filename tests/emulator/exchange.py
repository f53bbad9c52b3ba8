"""The small interfaces between the emulator's dispatcher and its provider modules.

A provider module is mostly data: a table of routes whose handlers turn an ``Exchange`` into a
reply value, plus how that provider spells errors and headers. The dispatcher and the sender do
everything scenario-related, the same way for every provider.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping

from tests.emulator.content import GeneratedText
from tests.emulator.scenarios import Scenario

# The one API key every provider refuses with its authentication error.
REJECTED_API_KEY = "emulator-reject"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as a handler sees it."""

    index: int  # position in Emulator.requests
    method: str
    path: str  # without the provider prefix, e.g. "/v1/chat/completions"
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    body: Mapping[str, Any]  # the parsed JSON object; empty for requests without a body
    params: Mapping[str, str]  # named groups of the matched route
    scenario: Scenario
    digest: str  # request_digest(): ids derived from it repeat for identical requests


class Failure(StrEnum):
    """Why a request fails; each provider words and types the error its own way."""

    SCENARIO = "scenario"  # the error:<status> scenario asked for it
    MISSING_KEY = "missing_key"
    REJECTED_KEY = "rejected_key"
    MALFORMED_JSON = "malformed_json"
    INVALID_REQUEST = "invalid_request"  # detail says what is wrong
    UNKNOWN_ROUTE = "unknown_route"
    UNKNOWN_MODEL = "unknown_model"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Answer with the provider's error body for this status."""

    status: int
    failure: Failure
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Document:
    """Answer 200 with this JSON document."""

    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TextDocument:
    """A non-streaming generation; rendered once the answer text (maybe a large one) is known."""

    render: Callable[[GeneratedText], Mapping[str, Any]]


class EventStream(Protocol):
    """One streaming generation in a provider's event format."""

    content_type: str

    def events(self, pieces: Iterable[str]) -> Iterator[bytes]:
        """Every SSE event of the stream, its content deltas carrying ``pieces`` in order."""
        ...

    def error_event(self, status: int) -> bytes:
        """The event the provider sends when it fails mid-stream with that status."""
        ...


@dataclass(frozen=True, slots=True)
class TextStream:
    """A streaming generation."""

    stream: EventStream


Reply = ErrorReply | Document | TextDocument | TextStream
Handler = Callable[[Exchange], Reply]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: method, a full-match path pattern with named groups, and its handler."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    json_body: bool = True  # the request body must be a JSON object

    @classmethod
    def of(cls, method: str, pattern: str, handler: Handler) -> Route:
        return cls(method, re.compile(pattern), handler, json_body=method in ("POST", "PUT", "PATCH"))


class ProviderEmulator(Protocol):
    """Everything that differs between providers, apart from their endpoint handlers."""

    name: str  # URL prefix and RecordedRequest.provider, e.g. "openai"
    routes: Sequence[Route]
    json_content_type: str  # Content-Type of JSON bodies, errors included

    def admit(self, request: web.Request) -> ErrorReply | None:
        """Check credentials and required headers, as the real API does before anything else."""
        ...

    def request_id(self, index: int) -> str: ...

    def response_headers(self, request_id: str, status: int) -> dict[str, str]:
        """Headers the real API sends on every response (ids, rate limits), except Content-Type."""
        ...

    def error_body(self, error: ErrorReply, request_id: str) -> bytes: ...

    def encode_json(self, document: Mapping[str, Any]) -> bytes: ...


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None
