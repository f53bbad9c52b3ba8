"""Incremental Server-Sent Events framing and parsing with bounded memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# An event ends at a blank line, whatever the line-ending convention (LF, CRLF, CR).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: bytes


class SSEFramer:
    """Splits a byte stream into raw events (each including its terminating blank line).

    Holds at most `max_event_bytes` of an unfinished event; beyond that the partial
    event is released as-is (`oversized`) so memory stays bounded and no byte is lost.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._buf = b""
        self._max = max_event_bytes

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """Yield (raw_event_bytes, complete) for each event finished by `data`."""
        buf = self._buf + data if self._buf else data
        start = 0
        while True:
            m = _EVENT_END.search(buf, start)
            if m is None:
                break
            yield buf[start : m.end()], True
            start = m.end()
        rest = buf[start:]
        # A trailing CR may be the first half of a CRLF: keep it with the remainder.
        if len(rest) > self._max:
            yield rest, False
            rest = b""
        self._buf = rest

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def parse_event(raw: bytes) -> SSEEvent | None:
    """Parse one raw event into its `event` name and joined `data` lines (None if no data)."""
    name = "message"
    data: list[bytes] = []
    for line in raw.splitlines():
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data:
        return None
    return SSEEvent(name, b"\n".join(data))


class SSEParser:
    """Feeds bytes, yields parsed events; oversized events are dropped (counted), never buffered."""

    __slots__ = ("_framer", "oversized")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._framer = SSEFramer(max_event_bytes)
        self.oversized = 0

    def feed(self, data: bytes) -> Iterator[SSEEvent]:
        for raw, complete in self._framer.feed(data):
            if not complete:
                self.oversized += 1
                continue
            event = parse_event(raw)
            if event is not None:
                yield event

    def close(self) -> Iterator[SSEEvent]:
        """A stream may end without the final blank line; parse what is left."""
        rest = self._framer.flush()
        if rest.strip():
            event = parse_event(rest)
            if event is not None:
                yield event
