"""Response parsers shared by every provider kind: SSE streams and bounded JSON bodies."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from gateway.providers.base import JsonPath, ResponseSummary, TextTarget, target
from gateway.sse import SSEEvent, SSEParser

_USAGE_KEY = re.compile(rb'"(usage|usageMetadata)"\s*:\s*\{')
TAIL_BYTES = 64 * 1024


class Accumulator(Protocol):
    """Provider-specific: folds events or a whole body into a ResponseSummary."""

    def on_event(self, event: SSEEvent) -> None: ...

    def on_body(self, body: Any) -> None:
        """Called once with the parsed JSON body (any JSON value), or a `{"usage": …}` stub."""

    def summary(self) -> ResponseSummary: ...


class PreviewText:
    """Collects text up to a limit, then ignores the rest."""

    __slots__ = ("_limit", "_parts", "_size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0

    def add(self, text: object) -> None:
        if not isinstance(text, str) or self._size >= self._limit:
            return
        text = text[: self._limit - self._size]
        self._parts.append(text)
        self._size += len(text)

    def text(self) -> str:
        return "".join(self._parts)


def loads(data: bytes) -> dict[str, Any] | None:
    """Parse a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class StreamResponseParser:
    """Feeds decoded SSE bytes through the framer into an accumulator."""

    __slots__ = ("_acc", "_sse")

    def __init__(self, accumulator: Accumulator) -> None:
        self._acc = accumulator
        self._sse = SSEParser()

    def feed(self, data: bytes) -> None:
        for event in self._sse.feed(data):
            self._acc.on_event(event)

    def summary(self) -> ResponseSummary:
        for event in self._sse.close():
            self._acc.on_event(event)
        return self._acc.summary()


class JsonResponseParser:
    """Keeps a JSON body up to `limit` bytes; past that, only a tail window for usage.

    Usage sits at the end of OpenAI, Anthropic and Gemini bodies, so a huge body
    (e.g. many embeddings) still yields its token counts without being held whole.
    """

    __slots__ = ("_acc", "_chunks", "_limit", "_overflow", "_size", "_tail")

    def __init__(self, accumulator: Accumulator, limit: int) -> None:
        self._acc = accumulator
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._overflow = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        if not self._overflow:
            self._size += len(data)
            if self._size <= self._limit:
                self._chunks.append(data)
                return
            self._overflow = True
            self._tail = b"".join(self._chunks)[-TAIL_BYTES:]
            self._chunks = []
        self._tail = (self._tail + data)[-TAIL_BYTES:]

    def summary(self) -> ResponseSummary:
        if not self._overflow:
            with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: nothing to learn from it
                self._acc.on_body(orjson.loads(b"".join(self._chunks)))
        else:
            usage = _usage_from_tail(self._tail)
            if usage is not None:
                self._acc.on_body(usage)
        return self._acc.summary()


def _usage_from_tail(tail: bytes) -> dict[str, Any] | None:
    """Find the last `"usage": {...}` object in a window and parse just that."""
    matches = list(_USAGE_KEY.finditer(tail))
    if not matches:
        return None
    m = matches[-1]
    start = m.end() - 1
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(tail)):
        c = tail[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                inner = loads(tail[start : i + 1])
                return None if inner is None else {m.group(1).decode(): inner}
    return None


def as_int(value: object) -> int | None:
    """A token count from JSON, or None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]… or None when any step is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def text_of(content: Any) -> list[str]:
    """Text of a message `content`: a string, or a list of parts with `text` fields."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def text_targets(location: str, content: Any, path: JsonPath) -> Iterator[TextTarget]:
    """Targets for a message `content` at `path`: a string, or a list of parts with `text` fields."""
    if isinstance(content, str):
        if content:
            yield TextTarget(location, content, path)
        return
    if isinstance(content, list):
        for i, part in enumerate(content):
            if isinstance(part, str) and part:
                yield TextTarget(location, part, (*path, i))
            elif isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"]:
                yield TextTarget(location, part["text"], (*path, i, "text"))


def value_target(location: str, container: Any, key: str | int, path: JsonPath) -> Iterator[TextTarget]:
    """A target for `container[key]` (a string, or an object/array scanned as JSON), if present."""
    if isinstance(container, dict) and isinstance(key, str):
        value = container.get(key)
    elif isinstance(container, list) and isinstance(key, int) and key < len(container):
        value = container[key]
    else:
        return
    found = target(location, (*path, key), value)
    if found is not None:
        yield found


def json_text(value: Any) -> str:
    """A JSON value as text for scanning (tool arguments, function responses)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return ""
