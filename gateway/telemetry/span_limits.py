"""What one span may hold: the attribute rules of the OpenTelemetry API and the span limits.

Limits come from the `OTEL_SPAN_*_LIMIT` / `OTEL_ATTRIBUTE_*_LIMIT` variables with the
specification's defaults (128 attributes, events and links; no value length limit); what does
not fit is dropped and counted in the span's `dropped_*` fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.util import types

log = logging.getLogger(__name__)


def _limit(env: Mapping[str, str], names: tuple[str, ...], default: int | None) -> int | None:
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                log.warning("%s=%s is not a whole number; ignored", name, raw)
                continue
            if value >= 0:
                return value
            log.warning("%s=%s is negative; ignored", name, raw)
    return default


@dataclass(frozen=True, slots=True)
class SpanLimits:
    """How much one span may hold; beyond it attributes, events and links are dropped and counted."""

    attributes: int = 128
    attribute_length: int | None = None  # longer string values are truncated
    events: int = 128
    links: int = 128
    event_attributes: int = 128
    link_attributes: int = 128

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SpanLimits:
        """The OTEL_SPAN_* / OTEL_ATTRIBUTE_* limit variables, with the specification's defaults."""
        attributes = _limit(env, ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"), 128)
        length = _limit(
            env, ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"), None
        )
        return cls(
            attributes=128 if attributes is None else attributes,
            attribute_length=length,
            events=_limit(env, ("OTEL_SPAN_EVENT_COUNT_LIMIT",), 128) or 0,
            links=_limit(env, ("OTEL_SPAN_LINK_COUNT_LIMIT",), 128) or 0,
            event_attributes=_limit(env, ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",), 128) or 0,
            link_attributes=_limit(env, ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",), 128) or 0,
        )


INVALID = object()  # clean_value's answer for a value the API does not allow


def clean_value(value: Any, max_length: int | None) -> Any:
    """The value as the API allows it (str, bool, int, float, or a homogeneous sequence), or INVALID."""
    cls = type(value)
    if cls is str:
        return value if max_length is None or len(value) <= max_length else value[:max_length]
    if cls is int or cls is bool or cls is float:
        return value
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = tuple(value)
        kinds = {type(item) for item in items if item is not None}
        if len(kinds) > 1 or not kinds <= {str, bool, int, float}:
            return INVALID
        if max_length is not None and kinds == {str}:
            items = tuple(item[:max_length] if item is not None else None for item in items)
        return items
    return INVALID


PLAIN_TYPES = frozenset((str, bool, int, float))


def bounded_attributes(
    attributes: types.Attributes, count_limit: int, max_length: int | None
) -> tuple[dict[str, Any], int]:
    """Valid attributes up to `count_limit`, and how many were dropped."""
    out: dict[str, Any] = {}
    dropped = 0
    for key, value in (attributes or {}).items():
        if type(value) not in PLAIN_TYPES or max_length is not None or type(key) is not str or not key:
            value = clean_value(value, max_length)
            if value is INVALID or not key or not isinstance(key, str):
                log.warning("attribute %r: invalid key or value type; dropped", key)
                continue
        if len(out) < count_limit:
            out[key] = value
        else:
            dropped += 1
    return out, dropped
