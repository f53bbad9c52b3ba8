"""Finished spans as OTLP protobuf bytes, written by hand (opentelemetry/proto/trace/v1/trace.proto).

Why not the generated protobuf classes: building and serialising message objects costs ~35 µs
a span in Python. Here a span is a join of byte strings, and the (key, value) pairs that repeat
from request to request (method, route, provider, model, server address …) come from a bounded
cache of their encodings. Tests decode the output with the official `opentelemetry-proto` classes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SMALL_VARINTS = tuple(bytes((n,)) for n in range(128))
_DOUBLE = struct.Struct("<d").pack
_SPAN_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64
_EVENT_TIME = struct.Struct("<BQ").pack
_FLAGS = struct.Struct("<I").pack

# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
_ANY_STRING, _ANY_BOOL, _ANY_INT, _ANY_DOUBLE, _ANY_ARRAY = b"\x0a", b"\x10", b"\x18", b"\x21", b"\x2a"
_KV_KEY, _KV_VALUE = b"\x0a", b"\x12"
SPAN_ATTRIBUTE_TAG = b"\x4a"  # Span.attributes = 9
EVENT_ATTRIBUTE_TAG = b"\x1a"  # Span.Event.attributes = 3
LINK_ATTRIBUTE_TAG = b"\x22"  # Span.Link.attributes = 4
RESOURCE_ATTRIBUTE_TAG = b"\x0a"  # Resource.attributes = 1
SCOPE_ATTRIBUTE_TAG = b"\x1a"  # InstrumentationScope.attributes = 3

# SpanFlags: bits 0-7 are the W3C trace flags; bit 8 says whether bit 9 (parent is remote) is known.
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200

STATUS_OK, STATUS_ERROR = 1, 2  # Status.StatusCode (UNSET = 0 is not written)


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (negative int64 values: pass `value & (2**64 - 1)`)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + varint(len(payload)) + payload


def any_value(value: Any) -> bytes | None:
    """An AnyValue message body, or None for a value the OpenTelemetry API does not allow."""
    cls = type(value)
    if cls is str:
        return delimited(_ANY_STRING, value.encode("utf-8", "surrogatepass"))
    if cls is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if cls is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
        return _ANY_INT + varint(value & 0xFFFFFFFFFFFFFFFF)
    if cls is float:
        return _ANY_DOUBLE + _DOUBLE(value)
    if cls is tuple:
        items = []
        for item in value:
            body = any_value(item)
            if body is None:
                return None
            items.append(delimited(b"\x0a", body))
        return delimited(_ANY_ARRAY, b"".join(items))
    # Subclasses (a StrEnum, an IntEnum, numpy scalars…) encode as their base type.
    for base in (str, bool, int, float):
        if isinstance(value, base):
            return any_value(base(value))
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return any_value(tuple(value))
    return None


class AttributeEncoder:
    """KeyValue encodings (length-prefixed, without the field tag), with a bounded cache.

    The cache is keyed by (key, value, type) — `True == 1 == 1.0` must not share an entry — and
    cleared when full: unique values (ids) pass through it and fall out, the recurring ones are
    re-encoded once per clearing.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._cache: dict[tuple[str, Any, type], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._max_entries = max_entries

    def encode(self, key: str, value: Any) -> bytes | None:
        """`len + KeyValue` for one attribute, or None when the value cannot be encoded."""
        cache_key = (key, value, type(value))
        try:
            return self._cache[cache_key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value (a list that escaped validation)
            return self._encode(key, value)
        encoded = self._encode(key, value)
        if encoded is not None:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[cache_key] = encoded
        return encoded

    def _encode(self, key: str, value: Any) -> bytes | None:
        body = any_value(value)
        if body is None:
            log.warning("attribute %r: a %s value cannot be exported; dropped", key, type(value).__name__)
            return None
        message = delimited(_KV_KEY, key.encode("utf-8", "surrogatepass")) + delimited(_KV_VALUE, body)
        return varint(len(message)) + message

    def fields(self, tag: bytes, attributes: Mapping[str, Any]) -> list[bytes]:
        """The repeated KeyValue fields under `tag`, ready to join."""
        parts: list[bytes] = []
        cache = self._cache
        for key, value in attributes.items():
            try:
                encoded: bytes | None = cache[(key, value, type(value))]
            except (KeyError, TypeError):
                encoded = self.encode(key, value)
            if encoded is not None:
                parts.append(tag)
                parts.append(encoded)
        return parts

    def name(self, name: str) -> bytes:
        """Span.name (field 5); span names repeat as much as attributes do."""
        try:
            return self._names[name]
        except KeyError:
            pass
        if len(self._names) >= self._max_entries:
            self._names.clear()
        encoded = self._names[name] = delimited(b"\x2a", name.encode("utf-8", "surrogatepass"))
        return encoded


def resource(encoder: AttributeEncoder, attributes: Mapping[str, Any]) -> bytes:
    """A Resource message body."""
    return b"".join(encoder.fields(RESOURCE_ATTRIBUTE_TAG, attributes))


def scope(name: str, version: str | None, attributes: Mapping[str, Any] | None) -> bytes:
    """An InstrumentationScope message body."""
    parts = [delimited(b"\x0a", name.encode())]
    if version:
        parts.append(delimited(b"\x12", version.encode()))
    if attributes:
        parts.extend(AttributeEncoder().fields(SCOPE_ATTRIBUTE_TAG, attributes))
    return b"".join(parts)


def span_flags(trace_flags: int, parent_is_remote: bool | None) -> bytes:
    """Span.flags (field 16, fixed32): trace flags, and whether the parent was remote when known."""
    flags = trace_flags & 0xFF
    if parent_is_remote is not None:
        flags |= FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if parent_is_remote else 0)
    return b"\x85\x01" + _FLAGS(flags)


def event(
    encoder: AttributeEncoder, name: str, time_ns: int, attributes: Mapping[str, Any] | None, dropped: int
) -> bytes:
    """A Span.Event message body."""
    parts = [_EVENT_TIME(0x09, time_ns), delimited(b"\x12", name.encode("utf-8", "surrogatepass"))]
    if attributes:
        parts.extend(encoder.fields(EVENT_ATTRIBUTE_TAG, attributes))
    if dropped:
        parts.append(b"\x20" + varint(dropped))
    return b"".join(parts)


def link(
    encoder: AttributeEncoder,
    trace_id: int,
    span_id: int,
    trace_state: str,
    trace_flags: int,
    is_remote: bool,
    attributes: Mapping[str, Any] | None,
    dropped: int,
) -> bytes:
    """A Span.Link message body."""
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if trace_state:
        parts.append(delimited(b"\x1a", trace_state.encode()))
    if attributes:
        parts.extend(encoder.fields(LINK_ATTRIBUTE_TAG, attributes))
    if dropped:
        parts.append(b"\x28" + varint(dropped))
    flags = (trace_flags & 0xFF) | FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if is_remote else 0)
    parts.append(b"\x35" + _FLAGS(flags))
    return b"".join(parts)


def status(code: int, message: str) -> bytes:
    """A Status message body (code ERROR or OK; UNSET is the absence of the field)."""
    body = b"\x18" + varint(code)
    return delimited(b"\x12", message.encode("utf-8", "surrogatepass")) + body if message else body


def span_prefix(trace_id: int, span_id: int, trace_state: str, parent_span_id: int) -> bytes:
    """Span fields 1-4: ids, trace state and parent id."""
    head = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")
    if trace_state:
        head += delimited(b"\x1a", trace_state.encode())
    if parent_span_id:
        head += b"\x22\x08" + parent_span_id.to_bytes(8, "big")
    return head


def span_times(start_ns: int, end_ns: int) -> bytes:
    return _SPAN_TIMES(0x39, start_ns, 0x41, end_ns)


def span_message(body_parts: Iterable[bytes]) -> bytes:
    """One `ScopeSpans.spans` entry (field 2) from the parts of a Span message body."""
    body = b"".join(body_parts)
    return b"\x12" + varint(len(body)) + body


def export_request(resource_body: bytes, scopes: Iterable[tuple[bytes, str, Sequence[bytes]]]) -> bytes:
    """ExportTraceServiceRequest with one ResourceSpans: (scope body, schema url, span entries) each."""
    scope_spans = []
    for scope_body, schema_url, spans in scopes:
        parts = [delimited(b"\x0a", scope_body), *spans]
        if schema_url:
            parts.append(delimited(b"\x1a", schema_url.encode()))
        scope_spans.append(delimited(b"\x12", b"".join(parts)))
    resource_spans = delimited(b"\x0a", resource_body) + b"".join(scope_spans)
    return delimited(b"\x0a", resource_spans)
