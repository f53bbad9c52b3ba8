"""Writing one response to the wire, with the scenario's gzip, pacing, stalls and drops."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from tests.emulator.scenarios import STALL_SECONDS, Scenario

# Response bodies are recorded (uncompressed) up to this size; larger ones keep only their start.
RECORD_LIMIT = 8 * 1024 * 1024
# Large streams are written in batches of about this size: one write per ~1 KB event would make
# 250 MB take minutes instead of seconds. Normal streams are written event by event.
COALESCE_BYTES = 256 * 1024
# error-mid-stream sends this many events first.
EVENTS_BEFORE_STREAM_ERROR = 2


@dataclass(slots=True)
class RecordedResponse:
    """What the emulator sent for one request, before compression."""

    status: int = 0
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body_buffer: bytearray = field(default_factory=bytearray)
    truncated: bool = False  # the body exceeded RECORD_LIMIT; body holds its start
    completed: bool = False  # the whole response was written (not dropped, not cut by the peer)

    @property
    def body(self) -> bytes:
        return bytes(self.body_buffer)

    def append(self, data: bytes) -> None:
        room = RECORD_LIMIT - len(self.body_buffer)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self.body_buffer += data


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header value allows gzip (explicitly or via ``*``)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        quality = next((param[2:] for param in params if param.startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            continue
    return False


class _GzipEncoder:
    """Incremental gzip whose every write is flushed, so each event can be decoded on arrival."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        self._finished = False

    def encode(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The gzip trailer; empty once already finished."""
        if self._finished:
            return b""
        self._finished = True
        return self._compressor.flush(zlib.Z_FINISH)


def _gunzip_prefix(data: bytes) -> bytes:
    """What the first bytes of a gzip stream decode to."""
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)


class ConnectionDropped(Exception):
    """The drop-mid-stream scenario aborted the connection on purpose."""


class ResponseSender:
    """Sends one response for one request, honouring the scenario."""

    def __init__(
        self, request: web.Request, scenario: Scenario, record: RecordedResponse, compress: bool
    ) -> None:
        self._request = request
        self._scenario = scenario
        self._record = record
        self._encoder = _GzipEncoder() if compress else None
        self.response: web.StreamResponse | None = None

    async def send_document(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """A complete body with Content-Length; stall-after stalls and drop cuts it halfway."""
        wire = self._encoder.encode(body) + self._encoder.finish() if self._encoder else body
        response = await self._open(status, headers, content_length=len(wire))
        if self._scenario.stall_after is not None:
            await asyncio.sleep(STALL_SECONDS)
        if self._scenario.drop_after is not None:
            half = wire[: len(wire) // 2]
            await response.write(half)
            self._record.append(_gunzip_prefix(half) if self._encoder else half)
            self._drop()
        self._record.append(body)
        await response.write(wire)
        await self._close(response)

    async def send_chunks(self, headers: Mapping[str, str], chunks: Iterable[bytes]) -> None:
        """A large body written chunk by chunk (chunked transfer encoding)."""
        await self.send_events(headers, chunks, error_event=None, coalesce=True)

    async def send_events(
        self,
        headers: Mapping[str, str],
        events: Iterable[bytes],
        error_event: Callable[[int], bytes] | None,
        coalesce: bool = False,
    ) -> None:
        """A 200 stream, event by event unless ``coalesce`` and nothing needs per-event pacing."""
        response = await self._open(200, headers, content_length=None)
        scenario = self._scenario
        if coalesce and not scenario.paces_events:
            await self._write_coalesced(response, events)
        else:
            for index, event in enumerate(events):
                await self._pace(index)
                if scenario.error_mid_stream is not None and index == EVENTS_BEFORE_STREAM_ERROR:
                    if error_event is not None:
                        await self._write(response, error_event(scenario.error_mid_stream))
                    break
                await self._write(response, event)
        await self._close(response)

    async def _pace(self, index: int) -> None:
        scenario = self._scenario
        if scenario.drop_after is not None and index == scenario.drop_after:
            self._drop()
        if scenario.stall_after is not None and index == scenario.stall_after:
            await asyncio.sleep(STALL_SECONDS)
        elif index and scenario.delay:
            await asyncio.sleep(scenario.delay)

    async def _write_coalesced(self, response: web.StreamResponse, events: Iterable[bytes]) -> None:
        batch = bytearray()
        for event in events:
            batch += event
            if len(batch) >= COALESCE_BYTES:
                await self._write(response, bytes(batch))
                batch.clear()
        if batch:
            await self._write(response, bytes(batch))

    async def _open(
        self, status: int, headers: Mapping[str, str], content_length: int | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        if self._encoder:
            response.headers["Content-Encoding"] = "gzip"
        if content_length is not None:
            response.content_length = content_length
        self.response = response
        await response.prepare(self._request)
        self._record.status = status
        self._record.headers = CIMultiDict(response.headers)
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        self._record.append(data)
        await response.write(self._encoder.encode(data) if self._encoder else data)

    async def _close(self, response: web.StreamResponse) -> None:
        trailer = self._encoder.finish() if self._encoder else b""
        if trailer:
            await response.write(trailer)
        await response.write_eof()
        self._record.completed = True

    def _drop(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()
        raise ConnectionDropped
