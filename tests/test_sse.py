"""Incremental SSE framing: any split point, any line ending, bounded memory."""

from __future__ import annotations

from gateway.sse import SSEFramer, SSEParser

STREAM = b'event: a\ndata: {"x":1}\n\n: comment\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n'


def parse_in_pieces(data: bytes, size: int) -> list[tuple[str, bytes]]:
    parser = SSEParser()
    out = []
    for i in range(0, len(data), size):
        out += [(e.event, e.data) for e in parser.feed(data[i : i + size])]
    out += [(e.event, e.data) for e in parser.close()]
    return out


def test_every_split_point_gives_the_same_events() -> None:
    expected = [("a", b'{"x":1}'), ("message", b"line1\nline2"), ("message", b"[DONE]")]
    for size in range(1, len(STREAM) + 1):
        assert parse_in_pieces(STREAM, size) == expected


def test_crlf_and_cr_line_endings() -> None:
    for sep in (b"\r\n", b"\r"):
        data = STREAM.replace(b"\n", sep)
        for size in (1, 3, 7, len(data)):
            assert [d for _, d in parse_in_pieces(data, size)] == [b'{"x":1}', b"line1\nline2", b"[DONE]"]


def test_framer_keeps_raw_bytes_exactly() -> None:
    framer = SSEFramer()
    raw = b"".join(r for r, _ in framer.feed(STREAM)) + framer.flush()
    assert raw == STREAM


def test_oversized_event_is_released_not_buffered() -> None:
    framer = SSEFramer(max_event_bytes=100)
    out = list(framer.feed(b"data: " + b"x" * 1000))
    assert out and out[0][1] is False
    assert framer.flush() == b""


def test_unterminated_last_event_is_parsed_on_close() -> None:
    assert parse_in_pieces(b"data: tail", 4) == [("message", b"tail")]
