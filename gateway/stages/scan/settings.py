"""Typed `guards:` settings: which rules run, their allowlists, what findings do, output handling."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.stages.scan.actions import DEFAULT_ACTIONS, ActionTable
from gateway.stages.scan.detectors import ALL_DETECTORS, SELECTORS
from gateway.stages.scan.engines import ENGINE_NAMES, EngineName

STREAM_MODES = ("log", "hold")
_RULE_KEYS = ("enabled", "allow_values", "allow_patterns")


@dataclass(frozen=True, slots=True)
class RuleOptions:
    """One rule's switches: `enabled` (None: the detector's default) and its allowlist — exact
    matched values, or patterns (Python regular expressions matched against the whole value)."""

    enabled: bool | None = None
    allow_values: frozenset[str] = frozenset()
    allow_patterns: tuple[re.Pattern[str], ...] = ()

    def allows(self, value: str) -> bool:
        """True when `value` is allowlisted: a known-harmless match (e.g. a documentation example)."""
        return value in self.allow_values or any(p.fullmatch(value) for p in self.allow_patterns)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The `guards:` section.

    `actions` refine the shipped defaults (DEFAULT_ACTIONS in actions.py); teams, users and keys
    refine them further with `policy.guards.actions`. `streams`: `log` relays a stream as it
    arrives and scans behind it (a `block` then ends the stream once the match is seen); `hold`
    releases text only once it is scanned: `hold_chars` behind the newest text and past any match
    still growing, never more than `hold_max_chars` held. Non-streamed bodies are held whole for
    output actions up to `max_output_bytes`; a bigger one is relayed as it comes, scanned only
    for the audit. A text longer than `max_text_chars` is scanned up to that length, and a
    request's texts up to `max_request_chars` in all (both cuts leave a `scan_truncated` finding).
    """

    enabled: bool = True
    engine: str = "auto"
    actions: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    disabled_rules: tuple[str, ...] = ()  # shorthand for rules: {id: {enabled: false}}
    streams: str = "log"
    hold_chars: int = 256
    hold_max_chars: int = 16384
    max_output_bytes: int = 4 * 1024 * 1024
    max_text_chars: int = 1_000_000
    max_request_chars: int = 4_000_000
    cache_entries: int = 4096  # texts whose matches are remembered (agents resend whole chats)
    table: ActionTable = field(init=False, repr=False, compare=False)
    rule_options: Mapping[str, RuleOptions] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"guards.engine: one of {', '.join(ENGINE_NAMES)}, got {self.engine!r}")
        if self.streams not in STREAM_MODES:
            raise ValueError(f"guards.streams: log or hold, got {self.streams!r}")
        # Held text must be long enough for a rule to recognise a match (an OpenAI key after 23
        # characters, a JWT after ~50) before its beginning would be released.
        if self.hold_chars < 32 or self.hold_max_chars < self.hold_chars:
            raise ValueError("guards: hold_chars must be at least 32 and at most hold_max_chars")
        if self.max_text_chars <= 0 or self.max_request_chars <= 0:
            raise ValueError("guards: max_text_chars and max_request_chars must be positive")
        object.__setattr__(self, "table", ActionTable.parse(self.actions, SELECTORS, "guards.actions"))
        object.__setattr__(self, "rule_options", _rule_options(self.rules, self.disabled_rules))

    @property
    def engine_name(self) -> EngineName:
        return cast(EngineName, self.engine)

    def enabled_rules(self) -> frozenset[str]:
        """The rule ids that run: each detector's default, as switched by `rules`."""
        on = set()
        for detector in ALL_DETECTORS:
            options = self.rule_options.get(detector.rule)
            switched = options.enabled if options is not None else None
            if detector.enabled_by_default if switched is None else switched:
                on.add(detector.rule)
        return frozenset(on)


DEFAULT_TABLE = ActionTable.parse(DEFAULT_ACTIONS, SELECTORS, "default actions")


def _rule_options(raw: Any, disabled: tuple[str, ...]) -> dict[str, RuleOptions]:
    rules = {d.rule for d in ALL_DETECTORS}
    if not isinstance(raw, Mapping):
        raise ValueError("guards.rules: expected a mapping of rule id -> {enabled, allow_values, …}")
    out: dict[str, RuleOptions] = {}
    for rule in disabled:
        if rule not in rules:
            raise ValueError(f"guards.disabled_rules: unknown rule {rule!r}")
        out[rule] = RuleOptions(enabled=False)
    for rule, spec in raw.items():
        where = f"guards.rules.{rule}"
        if rule not in rules:
            raise ValueError(f"{where}: unknown rule id (known: {', '.join(sorted(rules))})")
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: expected a mapping with {', '.join(_RULE_KEYS)}")
        if unknown := sorted(set(spec) - set(_RULE_KEYS)):
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_RULE_KEYS)})")
        enabled = spec.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"{where}.enabled: true or false")
        values = _strings(spec.get("allow_values"), f"{where}.allow_values")
        patterns = []
        for i, source in enumerate(_strings(spec.get("allow_patterns"), f"{where}.allow_patterns")):
            try:
                patterns.append(re.compile(source))
            except re.error as exc:
                raise ValueError(f"{where}.allow_patterns[{i}]: not a regular expression: {exc}") from None
        if enabled is None and rule in out:
            enabled = out[rule].enabled
        out[rule] = RuleOptions(enabled, frozenset(values), tuple(patterns))
    return out


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings")
    return list(value)
