"""Observers of the relayed response: hash, byte count, decompression, parsing — all bounded."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

from gateway.providers.base import ResponseParser, ResponseSummary

try:  # optional: only advertised upstream when the decoder is installed
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

DECODABLE = ("gzip", "deflate", "br") if _brotli is not None else ("gzip", "deflate")
_DECODE_STEP = 1 << 20  # decompress in bounded steps so a zip bomb cannot balloon memory


class _Decoder(Protocol):
    def decode(self, data: bytes) -> list[bytes]: ...


class _Identity:
    __slots__ = ()

    def decode(self, data: bytes) -> list[bytes]:
        return [data]


class _Zlib:
    __slots__ = ("_d",)

    def __init__(self, encoding: str) -> None:
        # 47 = auto-detect gzip or zlib header; raw deflate falls back below.
        self._d = zlib.decompressobj(47 if encoding == "gzip" else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> list[bytes]:
        out = []
        try:
            piece = self._d.decompress(data, _DECODE_STEP)
            while piece:
                out.append(piece)
                piece = self._d.decompress(self._d.unconsumed_tail, _DECODE_STEP)
        except zlib.error:
            return out
        return out


class _Brotli:
    __slots__ = ("_d",)

    def __init__(self) -> None:
        assert _brotli is not None
        self._d = _brotli.Decompressor()

    def decode(self, data: bytes) -> list[bytes]:
        try:
            return [self._d.process(data)]
        except Exception:  # brotli.error is not exported consistently across versions
            return []


def decoder_for(content_encoding: str) -> _Decoder:
    """A streaming decoder for the upstream's Content-Encoding (identity when unknown)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Zlib("gzip" if encoding != "deflate" else "deflate")
    if encoding == "br" and _brotli is not None:
        return _Brotli()
    return _Identity()


def accept_encoding(client_value: str | None, allow: bool) -> str:
    """What to ask upstream for: the client's encodings we can also decode, else identity."""
    if not allow or not client_value:
        return "identity"
    wanted = [p.split(";")[0].strip().lower() for p in client_value.split(",")]
    usable = [e for e in wanted if e in DECODABLE]
    return ", ".join(usable) if usable else "identity"


class RequestDigest:
    """SHA-256 and size of the exact bytes relayed to the client."""

    __slots__ = ("_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class ResponseObserver:
    """Fed each upstream chunk: decodes a copy and parses it; never keeps the whole body.

    `sink`, when given, also gets every decoded piece (the output guard reads beside the parser).
    """

    __slots__ = ("_decoder", "_parser", "_sink", "parse_errors")

    def __init__(
        self, parser: ResponseParser, content_encoding: str, sink: Callable[[bytes], None] | None = None
    ) -> None:
        self._parser = parser
        self._decoder = decoder_for(content_encoding)
        self._sink = sink
        self.parse_errors = 0

    def feed(self, chunk: bytes) -> None:
        for piece in self._decoder.decode(chunk):
            self._parser.feed(piece)
            if self._sink is not None:
                self._sink(piece)

    def summary(self) -> ResponseSummary:
        return self._parser.summary()
