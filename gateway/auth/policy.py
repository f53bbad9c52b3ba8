"""What a caller may do: policies at four levels (key, user, team, global) and how they combine.

Resolution, for each setting: the most specific level that sets it wins (key over user over
team over global). Allow lists follow that rule; deny lists add up across every level — a
pattern denied anywhere is denied, whatever a more specific level allows. Within one level,
deny wins over allow.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.stages.scan.actions import ActionTable
from gateway.stages.scan.detectors import SELECTORS

LEVELS = ("key", "user", "team", "global")  # most specific first
MAX_TOKENS_ACTIONS = ("reject", "clamp")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Patterns:
    """Glob patterns (`claude-*-haiku*`); `allow` None means this level does not restrict."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """A level's guard settings: an action table over the global one, and (keys only) `bypass` —
    a trusted caller (e.g. an evaluation job) whose findings are only logged, the row flagged."""

    actions: dict[str, Any] = field(default_factory=dict)
    bypass: bool = False
    table: ActionTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", ActionTable.parse(self.actions, SELECTORS, "guards.actions"))


@dataclass(frozen=True, slots=True)
class Policy:
    """One level's settings; None (or an empty Patterns) leaves the decision to the next level.

    `endpoints` match the adapter's operation names (`chat.completions`, `responses`,
    `embeddings`, `models.list`, `messages`, `messages.count_tokens`, `generate_content`,
    `stream_generate_content`, `count_tokens`, `embed_content`, `passthrough` for the rest) or
    the GenAI operation they perform (`chat`, `embeddings`, `generate_content`, `text_completion`).
    `max_output_tokens` caps `max_tokens` / `max_output_tokens` / `maxOutputTokens`; over the cap
    the request is rejected or clamped (`max_tokens_action`); a request that sets no cap gets it.
    `source_addresses` are CIDRs (or single addresses) the caller must connect from.
    `guards` overrides what guards do with findings (see gateway/stages/scan/actions.py).
    """

    providers: Patterns = field(default_factory=Patterns)
    models: Patterns = field(default_factory=Patterns)
    endpoints: Patterns = field(default_factory=Patterns)
    max_output_tokens: int | None = None
    max_tokens_action: str | None = None
    streaming: bool | None = None
    source_addresses: tuple[str, ...] | None = None
    guards: GuardPolicy | None = None

    def __post_init__(self) -> None:
        if self.max_tokens_action is not None and self.max_tokens_action not in MAX_TOKENS_ACTIONS:
            raise ValueError(f"max_tokens_action must be reject or clamp, got {self.max_tokens_action!r}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError("max_output_tokens must be at least 1")
        for address in self.source_addresses or ():
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"source_addresses: {address!r} is not an IP address or CIDR") from None

    @property
    def empty(self) -> bool:
        return self == EMPTY_POLICY


EMPTY_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Denial:
    """Which rule denied a request and why, for the 403 message and the audit's rejection_rule."""

    rule: str  # e.g. policy.team.models
    message: str


@dataclass(frozen=True, slots=True)
class OutputCap:
    limit: int
    action: str  # reject | clamp
    rule: str


@dataclass(frozen=True, slots=True)
class PolicyChain:
    """The policies that apply to one caller, most specific first, each with its level's name."""

    levels: tuple[tuple[str, str, Policy], ...]  # (level, who, policy), e.g. ("team", "ml", …)

    def check_access(
        self, provider: str, model: str, operation: str, client_address: str, gen_ai_operation: str = ""
    ) -> Denial | None:
        """The first rule that denies this call, or None.

        Endpoint patterns match the adapter's operation name (`chat.completions`,
        `embed_content`, …) or its GenAI operation (`chat`, `embeddings`, `generate_content`), so
        `endpoints: {allow: [embeddings]}` means embeddings on every provider.
        """
        endpoint_names = (operation, gen_ai_operation) if gen_ai_operation else (operation,)
        for setting, values, what in (
            ("providers", (provider,), "provider"),
            ("endpoints", endpoint_names, "endpoint"),
            ("models", (model,), "model"),
        ):
            if setting == "models" and not model:
                continue  # an endpoint without a model (models.list, …) is governed by endpoints
            if denial := self._check_patterns(setting, values, what):
                return denial
        return self._check_source(client_address)

    def allows_streaming(self) -> Denial | None:
        for level, who, policy in self.levels:
            if policy.streaming is not None:
                if policy.streaming:
                    return None
                return Denial(f"policy.{level}.streaming", f"streaming is not allowed for {_who(level, who)}")
        return None

    def output_cap(self) -> OutputCap | None:
        """The cap on output tokens and what to do over it (most specific level that sets each)."""
        limit = next(((lv, p.max_output_tokens) for lv, _, p in self.levels if p.max_output_tokens), None)
        if limit is None:
            return None
        action = next((p.max_tokens_action for _, _, p in self.levels if p.max_tokens_action), "reject")
        return OutputCap(limit[1], action, f"policy.{limit[0]}.max_output_tokens")

    def _check_patterns(self, setting: str, values: tuple[str, ...], what: str) -> Denial | None:
        value = values[0]
        for level, who, policy in reversed(self.levels):  # deny anywhere wins: broadest first
            patterns: Patterns = getattr(policy, setting)
            if hit := _first_match(patterns.deny, values):
                return Denial(
                    f"policy.{level}.{setting}.deny",
                    f"{what} '{value}' is denied for {_who(level, who)} (matches '{hit}')",
                )
        for level, who, policy in self.levels:  # the most specific allow list decides
            allow = getattr(policy, setting).allow
            if allow is None:
                continue
            if _first_match(allow, values):
                return None
            shown = ", ".join(allow) if allow else "nothing"
            return Denial(
                f"policy.{level}.{setting}",
                f"{what} '{value}' is not allowed for {_who(level, who)} (allowed: {shown})",
            )
        return None

    def _check_source(self, client_address: str) -> Denial | None:
        for level, who, policy in self.levels:
            if policy.source_addresses is None:
                continue
            if _address_in(client_address, policy.source_addresses):
                return None
            return Denial(
                f"policy.{level}.source_addresses",
                f"source address {client_address or 'unknown'} is not allowed for {_who(level, who)}",
            )
        return None


def _who(level: str, who: str) -> str:
    return "this gateway" if level == "global" else f"{level} '{who}'"


def _first_match(patterns: Sequence[str], values: Sequence[str]) -> str | None:
    for pattern in patterns:
        glob = _glob(pattern)
        if any(glob.fullmatch(value) for value in values):
            return pattern
    return None


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    """Case-sensitive glob: `*`, `?`, `[…]` (fnmatch syntax, without its OS-specific case folding)."""
    return re.compile(fnmatch.translate(pattern))


def _address_in(address: str, allowed: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in _network(a) for a in allowed)


@lru_cache(maxsize=1024)
def _network(address: str) -> IPNetwork:
    return ipaddress.ip_network(address, strict=False)
