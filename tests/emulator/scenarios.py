"""Scenarios: per-request instructions that make the emulator misbehave on purpose.

A request names its scenario in the ``x-emulator-scenario`` header (or the emulator's default),
as a comma-separated list such as ``gzip,slow-first-byte:0.5``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

SCENARIO_HEADER = "x-emulator-scenario"

# How long `stall-after` holds a stream open: long enough for any idle timeout under test.
STALL_SECONDS = 60.0

# `drop-mid-stream` without an argument sends this many events before cutting the connection.
DEFAULT_DROP_AFTER = 2


class ScenarioError(ValueError):
    """The scenario text names an unknown scenario or has a bad argument."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """What one response should do besides answering correctly."""

    error_status: int | None = None  # answer with the provider's error body for this status
    error_mid_stream: int | None = None  # after a couple of events, send the in-stream error event
    gzip: bool = False  # gzip the body when the client accepts it
    slow_first_byte: float = 0.0  # seconds to wait before sending headers
    stall_after: int | None = None  # events to send before stalling for STALL_SECONDS
    delay: float = 0.0  # seconds between stream events
    large_stream: int = 0  # minimum bytes of content text in a stream
    large_body: int = 0  # minimum bytes of a non-streaming JSON body
    drop_after: int | None = None  # events to send before aborting the connection

    @property
    def paces_events(self) -> bool:
        """True when events must be written one at a time rather than coalesced."""
        return bool(
            self.delay
            or self.stall_after is not None
            or self.drop_after is not None
            or self.error_mid_stream is not None
        )


def _status(text: str) -> int:
    status = int(text)
    if not 400 <= status <= 599:
        raise ValueError(f"{status} is not an error status")
    return status


def _count(text: str) -> int:
    count = int(text)
    if count < 0:
        raise ValueError("must not be negative")
    return count


def _seconds(text: str) -> float:
    seconds = float(text)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _milliseconds(text: str) -> float:
    return _seconds(text) / 1000


@dataclass(frozen=True, slots=True)
class _Option:
    field: str
    parse: Callable[[str], object] | None  # None: a flag that takes no argument
    default: str | None = None  # argument used when an argument-taking option is given bare


_OPTIONS: Mapping[str, _Option] = MappingProxyType(
    {
        "error": _Option("error_status", _status),
        "error-mid-stream": _Option("error_mid_stream", _status, default="500"),
        "gzip": _Option("gzip", None),
        "slow-first-byte": _Option("slow_first_byte", _seconds),
        "stall-after": _Option("stall_after", _count),
        "delay": _Option("delay", _milliseconds),
        "large-stream": _Option("large_stream", _count),
        "large-body": _Option("large_body", _count),
        "drop-mid-stream": _Option("drop_after", _count, default=str(DEFAULT_DROP_AFTER)),
    }
)

SCENARIO_NAMES: tuple[str, ...] = tuple(_OPTIONS)


def parse_scenario(text: str | None) -> Scenario:
    """Parse ``name[:arg],name[:arg]…``; an empty or missing text is the plain scenario."""
    values: dict[str, Any] = {}
    for item in (text or "").split(","):
        name, has_arg, arg = item.strip().partition(":")
        if not name:
            continue
        option = _OPTIONS.get(name)
        if option is None:
            raise ScenarioError(f"unknown emulator scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
        if option.parse is None:
            if has_arg:
                raise ScenarioError(f"emulator scenario {name!r} takes no argument")
            values[option.field] = True
            continue
        if not has_arg:
            if option.default is None:
                raise ScenarioError(f"emulator scenario {name!r} needs an argument, e.g. {name}:1")
            arg = option.default
        try:
            values[option.field] = option.parse(arg)
        except ValueError as exc:
            raise ScenarioError(f"bad argument for emulator scenario {name!r}: {arg!r} ({exc})") from exc
    return Scenario(**values)
