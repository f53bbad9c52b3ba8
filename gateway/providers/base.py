"""The provider-adapter protocol: the only place that knows a provider's wire format."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from gateway.audit.record import Usage
from gateway.errors import ErrorCode, GatewayError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A well-known endpoint of a provider kind."""

    operation: str  # gateway name, e.g. "chat.completions", "messages"
    gen_ai_operation: str  # GenAI semconv gen_ai.operation.name, e.g. "chat"
    json_body: bool = True  # request body must be a JSON object


OPAQUE = Endpoint(operation="passthrough", gen_ai_operation="", json_body=False)

# Where a text sits in an exchange, in every provider's vocabulary (guards act per location).
REQUEST_LOCATIONS = ("system", "user", "assistant", "tool_definition", "tool_call", "tool_result")
RESPONSE_LOCATIONS = ("output", "output_tool_call")

JsonPath = tuple[str | int, ...]


class TextTarget(NamedTuple):
    """One text of a request or response body that guards look at, and where it sits.

    `path` leads from the parsed JSON body to the value, so a guard can rewrite it. A
    `structured` target is a JSON object or array (tool arguments, function responses) whose
    `text` is its compact JSON serialisation.
    """

    location: str
    text: str
    path: JsonPath = ()
    structured: bool = False


class StreamText(NamedTuple):
    """A text carried by one parsed stream event.

    A `delta` continues the running text of its `channel` (one per choice, content block or
    tool call), so a match may span events; otherwise `text` is whole (a final event repeating
    the full output) and is scanned on its own. `path` leads from the event's JSON to the value.
    """

    channel: tuple[str | int, ...]
    location: str
    path: JsonPath
    text: str
    delta: bool = True
    structured: bool = False


def target(location: str, path: JsonPath, value: Any) -> TextTarget | None:
    """A target for `value` at `path`: strings as they are, objects and arrays as their JSON."""
    if isinstance(value, str):
        return TextTarget(location, value, path) if value else None
    if isinstance(value, dict | list) and value:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # nested deeper than orjson writes (255 levels; it reads 1024)
            text = "\n".join(string_leaves(value))  # still scanned; not re-parsable, so never redacted
        return TextTarget(location, text, path, structured=True)
    return None


def string_leaves(value: Any) -> Iterator[str]:
    """Every string (keys included) in a JSON value, without recursion, however deep it is."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.values())
            stack.extend(node.keys())
        elif isinstance(node, list):
            stack.extend(reversed(node))


@dataclass(slots=True)
class RequestView:
    """A parsed, read-only view of one incoming request."""

    adapter: ProviderAdapter
    method: str
    path: str  # upstream path, e.g. "/v1/chat/completions"
    query: str  # raw query string, without "?"
    body: bytes
    endpoint: Endpoint
    json: dict[str, Any] | None = None
    model: str = ""
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature, top_p

    @property
    def known(self) -> bool:
        return self.endpoint is not OPAQUE

    def scan_targets(self) -> Iterator[TextTarget]:
        """The texts a guard should look at (system, user, tool_result, …), with their paths."""
        if self.json is None:
            return iter(())
        return self.adapter.scan_targets(self.json)


@dataclass(slots=True)
class ResponseSummary:
    """What observers extracted from a response, bounded in size."""

    response_id: str = ""
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = ""
    preview: str = ""
    error_type: str = ""
    error_message: str = ""


class ResponseParser(Protocol):
    """Fed decoded response bytes as they arrive; asked for a summary at the end."""

    def feed(self, data: bytes) -> None: ...

    def summary(self) -> ResponseSummary: ...


class StreamFilter(Protocol):
    """Rewrites a relayed stream event by event (e.g. strips a usage chunk)."""

    def filter(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class ProviderAdapter(Protocol):
    """Everything kind-specific. Implementations live in one module per kind."""

    kind: str
    gen_ai_provider: str  # gen_ai.provider.name
    default_base_url: str

    def classify(self, method: str, path: str) -> Endpoint: ...

    def parse_request(self, method: str, path: str, query: str, body: bytes) -> RequestView: ...

    def scan_targets(self, body: Mapping[str, Any]) -> Iterator[TextTarget]: ...

    def output_targets(self, body: Any) -> Iterator[TextTarget]:
        """The model's output in a complete JSON response body (`output`, `output_tool_call`)."""
        ...

    def stream_texts(self, data: Mapping[str, Any]) -> list[StreamText]:
        """The output texts one parsed stream event carries."""
        ...

    def credential_header(self, secret: str) -> tuple[str, str]:
        """The header that carries the server-side provider key (gateway-key callers)."""
        ...

    def output_limit_fields(self, operation: str) -> tuple[tuple[str, ...], ...]:
        """JSON paths that cap output tokens for `operation`: the first present is used, else the first."""
        ...

    def prepare_upstream(self, view: RequestView) -> tuple[bytes, StreamFilter | None]: ...

    def rate_limit_headers(self, metric: str, limit: int, reset_s: int) -> dict[str, str]:
        """The provider's own rate-limit headers for a 429 the gateway answers (rpm or tpm)."""
        ...

    def response_parser(
        self, view: RequestView, streaming: bool, preview_chars: int, parse_limit: int
    ) -> ResponseParser: ...

    def render_error(self, err: GatewayError) -> bytes: ...

    def stream_error_event(self, err: GatewayError) -> bytes: ...


def load_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise a 400 GatewayError."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise GatewayError(ErrorCode.INVALID_REQUEST, "request body must be a JSON object")
    return parsed
