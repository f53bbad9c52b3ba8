"""Rewriting texts inside a JSON body while keeping the rest of it as it was.

A redacted string is spliced into the original bytes when its encoded form occurs there exactly
once, so everything else goes on byte for byte. Otherwise (the client escaped it differently,
it occurs twice, or the value is an object) the body is re-serialised from the parsed JSON with
the new values at their paths: the same JSON, possibly spelled differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.providers.base import JsonPath


class RedactionFailed(ValueError):
    """A match could not be removed without breaking the JSON around it."""


def redact_structured(json_text: str, new_text: str) -> Any:
    """The JSON value `new_text` (a structured target's text after redaction), or RedactionFailed."""
    try:
        return orjson.loads(new_text)
    except orjson.JSONDecodeError:
        raise RedactionFailed(f"redacting broke a structured value ({len(json_text)} chars)") from None


def rewrite_body(body: bytes, parsed: Any, edits: Sequence[tuple[JsonPath, Any, Any]]) -> bytes:
    """`body` with each (path, old value, new value) edit applied; `parsed` is the body as JSON."""
    expected = with_values(parsed, [(path, new) for path, _, new in edits])
    spliced = _splice(body, edits)
    # The splice is kept only when it changed exactly what was meant (an encoded string can
    # also occur inside another string).
    if spliced is not None and _parses_to(spliced, expected):
        return spliced
    return orjson.dumps(expected)


def _parses_to(body: bytes, expected: Any) -> bool:
    try:
        return bool(orjson.loads(body) == expected)
    except orjson.JSONDecodeError:
        return False


def _splice(body: bytes, edits: Sequence[tuple[JsonPath, Any, Any]]) -> bytes | None:
    for _, old, new in edits:
        if not isinstance(old, str) or not isinstance(new, str):
            return None
        for encode in (_compact, _ascii):
            encoded = encode(old)
            if body.count(encoded) == 1:
                body = body.replace(encoded, encode(new))
                break
        else:
            return None
    return body


def _compact(text: str) -> bytes:
    return orjson.dumps(text)


def _ascii(text: str) -> bytes:  # json.dumps' default, as many clients send it
    return json.dumps(text).encode()


def with_values(data: Any, edits: Sequence[tuple[JsonPath, Any]]) -> Any:
    """A copy of `data` with `value` at each path; only the containers along the paths are copied."""
    root = _shallow(data)
    for path, value in edits:
        if not path:
            return value
        node = root
        for step in path[:-1]:
            child = _shallow(node[step])
            node[step] = child
            node = child
        node[path[-1]] = value
    return root


def _shallow(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def value_at(data: Any, path: JsonPath) -> Any:
    node = data
    for step in path:
        node = node[step]
    return node
