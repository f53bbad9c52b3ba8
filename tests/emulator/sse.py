"""Server-sent-event framing, as each provider puts it on the wire."""

from __future__ import annotations

from typing import Any

import orjson


def sse_event(data: Any, *, event: str | None = None, separator: bytes = b"\n") -> bytes:
    """One event: an optional ``event:`` line, one ``data:`` line of compact JSON, a blank line.

    ``data`` that is already bytes is sent as is (OpenAI's ``[DONE]``). ``separator`` ends each
    line: OpenAI and Anthropic use LF, Google uses CRLF.
    """
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = b"event: " + event.encode() + separator if event else b""
    return head + b"data: " + payload + separator + separator
