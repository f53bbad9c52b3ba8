"""Guarding the model's output: complete JSON bodies and SSE streams, incrementally.

Per exchange a `ResponseGuard` decides, from the caller's actions, how the output is watched:

- *observe*: only `log` applies (or streams are in `log` mode). Bytes go to the client as they
  arrive; the guard reads a decoded copy beside them. In a stream a `block` still ends the
  stream at the event where the match is seen (what came before it has been sent).
- *hold*: a `redact` or `block` must act before the client sees the text. A complete body is
  checked before it is sent; a stream (with `guards.streams: hold`) is released event by event
  once its text is scanned: `hold_chars` behind the newest text and past any match still growing.

Text spread over many events (one channel per choice, content block or tool call) is scanned as
one running text, so a match split across chunks is found.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import ErrorCode, GatewayError
from gateway.providers.base import RESPONSE_LOCATIONS, JsonPath, ProviderAdapter, RequestView
from gateway.providers.parsing import loads
from gateway.sse import SSEFramer, parse_event
from gateway.stages.scan.actions import Action, ActionResolver
from gateway.stages.scan.guard import Findings, Guard, Hit, SensitiveValues, placeholder, replace_spans
from gateway.stages.scan.redact import RedactionFailed, redact_structured, rewrite_body, with_values

if TYPE_CHECKING:
    from gateway.auth.policy import PolicyChain

LOCATION_NAMES = {"output": "the model's output", "output_tool_call": "a tool call in the model's output"}
ERROR_TYPE = "guard_blocked"


class OutputBlocked(Exception):
    """The output hit a blocking rule: the response ends here. `released` may still be sent."""

    def __init__(self, error: GatewayError, released: bytes = b"") -> None:
        super().__init__(error.message)
        self.error = error
        self.released = released


def output_block_error(hit: Hit, location: str) -> GatewayError:
    place = LOCATION_NAMES.get(location, location)
    return GatewayError(
        ErrorCode.PERMISSION_DENIED,
        f"response blocked: {hit.rule} ({hit.category}) found in {place} (rule guards.{hit.rule})",
        rule=f"guards.{hit.rule}",
    )


class ResponseGuard:
    """Watches one exchange's output; collects its findings and the sensitive values it saw."""

    def __init__(self, guard: Guard, resolver: ActionResolver, adapter: ProviderAdapter, acts: bool) -> None:
        self.guard = guard
        self.resolver = resolver
        self.adapter = adapter
        self.holds_body = acts  # complete bodies are checked before they are sent
        self.holds_stream = acts and guard.settings.streams == "hold"
        self.findings = Findings()
        self.sensitive = SensitiveValues()
        self._observed: list[bytes] = []
        self._observed_size = 0
        self._stream: StreamGuard | None = None

    @classmethod
    def for_caller(
        cls, guard: Guard, chain: PolicyChain | None, view: RequestView, resolver: ActionResolver
    ) -> ResponseGuard | None:
        """A guard for this request's output, or None when nothing watches it (or it has no text)."""
        if view.endpoint.gen_ai_operation in ("", "embeddings") or not guard.watches_output(chain):
            return None
        return cls(guard, resolver, view.adapter, guard.acts_on_output(chain))

    # -- complete bodies ------------------------------------------------------------------------------

    def check_body(self, body: bytes) -> bytes:
        """Before sending a complete (uncompressed) body: the body to send, or OutputBlocked."""
        parsed = _json(body)
        if parsed is None:
            return body
        edits = []
        for target in self.adapter.output_targets(parsed):
            hits = self.record_hits(target.text, target.location, redacts=True, blocks=True)
            redact = [(h.start, h.end, h.rule) for h in hits if h.action is Action.REDACT]
            block = next((h for h in hits if h.action is Action.BLOCK), None)
            if block is None and redact:
                new_text = replace_spans(target.text, redact)
                try:
                    new = redact_structured(target.text, new_text) if target.structured else new_text
                except RedactionFailed:
                    block = next(h for h in hits if h.action is Action.REDACT)
                    self.findings.add_hit(block, target.location, Action.BLOCK)
                else:
                    edits.append((target.path, _value_at(parsed, target.path), new))
            if block is not None:
                raise OutputBlocked(output_block_error(block, target.location))
        return rewrite_body(body, parsed, edits) if edits else body

    def too_large_to_hold(self) -> None:
        """A body over `max_output_bytes`: relayed as it comes, scanned only as far as it is kept."""
        self.holds_body = False
        self.findings.coverage("output")

    def observe(self, decoded: bytes) -> None:
        """A decoded piece of a body relayed as it came: kept (bounded) to be scanned afterwards."""
        if self._stream is not None:
            self._stream.feed(decoded)
            return
        if self._observed_size < self.guard.settings.max_output_bytes:
            self._observed.append(decoded)
        self._observed_size += len(decoded)

    def close(self) -> None:
        """At the end of the exchange: scan what was observed of a complete body (log only)."""
        if self._stream is not None:
            self._stream.flush_observed()
            return
        if not self._observed:
            return
        body = b"".join(self._observed)
        self._observed = []
        if self._observed_size > self.guard.settings.max_output_bytes:
            self.findings.coverage("output")
            return
        parsed = _json(body)
        for target in self.adapter.output_targets(parsed) if parsed is not None else ():
            self.record_hits(target.text, target.location, redacts=False, blocks=False)

    # -- streams --------------------------------------------------------------------------------------

    def stream(self) -> StreamGuard:
        """The incremental guard of a stream: the relay's filter when held, else an observer."""
        self._stream = StreamGuard(self, hold=self.holds_stream)
        return self._stream

    @property
    def stopped(self) -> OutputBlocked | None:
        """A stream relayed as it comes that must end now (a blocking match was seen)."""
        return self._stream.stopped if self._stream is not None else None

    # -- shared -----------------------------------------------------------------------------------------

    def record_hits(
        self, text: str, location: str, *, redacts: bool, blocks: bool, cache: bool = True
    ) -> list[Hit]:
        """Hits in one text, recorded as findings with the action that could actually be applied:
        output the client already has can no longer be redacted (or blocked, once complete)."""
        hits = self.guard.hits(text, location, self.resolver, cache=cache)
        for hit in hits:
            action = hit.action
            if (action is Action.REDACT and not redacts) or (action is Action.BLOCK and not blocks):
                action = Action.LOG
            self.findings.add_hit(hit, location, action)
        self.sensitive.add_hits(text, hits)
        return hits


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _value_at(data: Any, path: JsonPath) -> Any:
    for step in path:
        data = data[step]
    return data


# --- streams -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Channel:
    """One running output text; `text` starts at absolute offset `base` (older text is dropped)."""

    location: str
    text: str = ""
    base: int = 0
    pending: int = 0  # characters appended since the last scan
    redactions: list[tuple[int, int, str]] = field(default_factory=list)  # absolute spans
    seen: dict[tuple[str, int], int] = field(default_factory=dict)  # (rule, start) -> end

    @property
    def total(self) -> int:
        return self.base + len(self.text)


@dataclass(slots=True)
class _Piece:
    channel: tuple[str | int, ...]
    start: int
    end: int
    path: JsonPath


@dataclass(slots=True)
class _Event:
    raw: bytes
    data: dict[str, Any] | None
    pieces: list[_Piece] = field(default_factory=list)
    edits: list[tuple[JsonPath, Any]] = field(default_factory=list)  # whole texts redacted


class StreamGuard:
    """Scans a stream's output text as it arrives; when holding, releases events once scanned."""

    def __init__(self, owner: ResponseGuard, hold: bool) -> None:
        self._owner = owner
        self._hold = hold
        settings = owner.guard.settings
        self._keep = settings.hold_chars
        self._max = settings.hold_max_chars
        self._framer = SSEFramer()
        self._channels: dict[tuple[str | int, ...], _Channel] = {}
        self._queue: deque[_Event] = deque()
        self._overflowed = False
        self._flushed = False
        # Watching a stream as it goes, the text is scanned in batches of `hold_chars` — on
        # every event instead when a finding can end the stream, so it ends where it is seen.
        self._eager = hold or owner.holds_body
        self.stopped: OutputBlocked | None = None

    # the relay's StreamFilter (hold mode)
    def filter(self, chunk: bytes) -> bytes:
        released: list[bytes] = []
        for raw, complete in self._framer.feed(chunk):
            self._event(raw, complete)
            if self.stopped is not None:
                raise OutputBlocked(self.stopped.error, b"".join(released))
            if self._hold:
                released.extend(self._release(final=False))
        return b"".join(released)

    def flush(self) -> bytes:
        self._flushed = True
        rest = self._framer.flush()
        if rest:
            self._event(rest, True)
        for channel in self._channels.values():
            self._scan(channel)
        if self.stopped is not None:
            raise OutputBlocked(self.stopped.error)
        return b"".join(self._release(final=True)) if self._hold else b""

    # an observer of the decoded stream (log mode): a block only sets `stopped`, the relay acts on it
    def feed(self, decoded: bytes) -> None:
        if self.stopped is None:
            with contextlib.suppress(OutputBlocked):
                self.filter(decoded)

    def flush_observed(self) -> None:
        """The exchange is over (or the client left): scan what is still unscanned."""
        if self.stopped is None and not self._flushed:
            # The stream is over: a blocking finding is recorded, nothing is left to stop.
            with contextlib.suppress(OutputBlocked):
                self.flush()

    # -- reading events --------------------------------------------------------------------------------

    def _event(self, raw: bytes, complete: bool) -> None:
        if not complete:  # an event over the framer's bound goes on unread: say it was not scanned
            self._owner.findings.coverage("output")
        parsed = parse_event(raw) if complete else None
        data = loads(parsed.data) if parsed is not None and parsed.data[:1] == b"{" else None
        texts = self._owner.adapter.stream_texts(data) if data is not None else ()
        event = _Event(raw, data) if self._hold else None  # watching only, nothing is queued
        if event is not None:
            self._queue.append(event)
        for text in texts:
            if not text.delta:
                self._whole(event, text.location, text.path, text.text, text.structured)
                continue
            channel = self._channels.get(text.channel)
            if channel is None:
                channel = self._channels[text.channel] = _Channel(text.location)
            start = channel.total
            channel.text += text.text
            channel.pending += len(text.text)
            if event is not None:
                event.pieces.append(_Piece(text.channel, start, channel.total, text.path))
            if self._eager or channel.pending >= self._keep:
                self._scan(channel)
            if event is None and len(channel.text) > 2 * self._keep:
                self._trim(channel, channel.total)

    def _whole(
        self, event: _Event | None, location: str, path: JsonPath, text: str, structured: bool
    ) -> None:
        """A text that arrives whole (e.g. a final event repeating the output): scanned on its own."""
        hits = self._owner.record_hits(text, location, redacts=self._hold, blocks=True)
        self._stop_on(hits, location)
        redact = [(h.start, h.end, h.rule) for h in hits if h.action is Action.REDACT]
        if event is not None and redact and self.stopped is None:
            new_text = replace_spans(text, redact)
            try:
                event.edits.append((path, redact_structured(text, new_text) if structured else new_text))
            except RedactionFailed:
                hit = next(h for h in hits if h.action is Action.REDACT)
                self.stopped = OutputBlocked(output_block_error(hit, location))

    def _scan(self, channel: _Channel) -> None:
        channel.pending = 0
        if not channel.text:
            return
        hits = self._owner.record_hits(
            channel.text, channel.location, redacts=self._hold, blocks=True, cache=False
        )
        self._stop_on(hits, channel.location)
        for hit in hits:
            start, end = channel.base + hit.start, channel.base + hit.end
            key = (hit.rule, start)
            if channel.seen.get(key, -1) >= end:
                continue
            channel.seen[key] = end
            if hit.action is Action.REDACT:
                channel.redactions.append((start, end, hit.rule))

    def _stop_on(self, hits: list[Hit], location: str) -> None:
        block = next((h for h in hits if h.action is Action.BLOCK), None)
        if block is not None and self.stopped is None:
            self.stopped = OutputBlocked(output_block_error(block, location))

    # -- releasing events (hold mode) --------------------------------------------------------------------

    def _release(self, final: bool) -> Iterator[bytes]:
        limits = {key: self._release_point(channel, final) for key, channel in self._channels.items()}
        while self._queue:
            event = self._queue[0]
            if any(piece.end > limits[piece.channel] for piece in event.pieces):
                break
            self._queue.popleft()
            yield self._rewritten(event)
        for key, channel in self._channels.items():
            waiting = [p.start for e in self._queue for p in e.pieces if p.channel == key]
            self._trim(channel, min(waiting, default=limits[key]))

    def _release_point(self, channel: _Channel, final: bool) -> int:
        """Text before this offset may go: `hold_chars` behind the newest, and before any match
        still growing; never more than `hold_max_chars` held."""
        total = channel.total
        if final:
            return total
        point = total - self._keep
        for start, end, _ in channel.redactions:
            if end > total - self._keep:  # near the newest text: it may still grow
                point = min(point, start)
        if point < total - self._max:
            point = total - self._max
            if not self._overflowed:
                self._overflowed = True
                self._owner.findings.coverage(channel.location)
        return point

    def _trim(self, channel: _Channel, keep_from: int) -> None:
        """Drop text no event needs, keeping `hold_chars` before it as context for later scans."""
        cut = keep_from - self._keep - channel.base
        if cut > 0:
            channel.text = channel.text[cut:]
            channel.base += cut
            channel.redactions = [r for r in channel.redactions if r[1] > channel.base]
            if len(channel.seen) > 1024:
                channel.seen = {k: end for k, end in channel.seen.items() if end > channel.base}

    def _rewritten(self, event: _Event) -> bytes:
        edits = list(event.edits)
        for piece in event.pieces:
            channel = self._channels[piece.channel]
            spans = [r for r in channel.redactions if r[0] < piece.end and r[1] > piece.start]
            if spans:
                edits.append((piece.path, _piece_text(channel, piece, spans)))
        if not edits or event.data is None:
            return event.raw
        return replace_event_data(event.raw, orjson.dumps(with_values(event.data, edits)))


def _piece_text(channel: _Channel, piece: _Piece, spans: list[tuple[int, int, str]]) -> str:
    """The piece's text with the parts inside redacted spans removed; a span's placeholder goes
    where the span starts (an earlier piece for a match that began there)."""
    out: list[str] = []
    position = piece.start
    for start, end, rule in sorted(spans):
        if start > position:
            out.append(channel.text[position - channel.base : start - channel.base])
        if start >= position and start >= piece.start:
            out.append(placeholder(rule))
        position = max(position, min(end, piece.end))
    if position < piece.end:
        out.append(channel.text[position - channel.base : piece.end - channel.base])
    return "".join(out)


def replace_event_data(raw: bytes, data: bytes) -> bytes:
    """An SSE event with its data replaced, every other field and the line endings kept."""
    lines = raw.splitlines(keepends=True)
    out: list[bytes] = []
    replaced = False
    for line in lines:
        if line.startswith(b"data:"):
            if replaced:
                continue
            ending = line[len(line.rstrip(b"\r\n")) :]
            out.append(b"data: " + data + ending)
            replaced = True
        else:
            out.append(line)
    return b"".join(out)


__all__ = ["RESPONSE_LOCATIONS", "OutputBlocked", "ResponseGuard", "StreamGuard"]
