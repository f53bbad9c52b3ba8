"""What a guard does with a finding: the action vocabulary, action tables and how levels combine.

An action table maps a *selector* — a rule id (`aws_access_key_id`) or a category
(`credential`, `injection`, `pii`) — to an action, either for every location or per location:

    credential: {request: block, response: log}
    injection: {default: log, tool_result: block}
    pii: log
    email_address: {output: redact}

Location keys are the locations themselves (`system`, `user`, `assistant`, `tool_definition`,
`tool_call`, `tool_result`, `output`, `output_tool_call`), the groups `request` and `response`,
or `default`. Within one table a rule beats its category, and a location beats its group, which
beats `default`. Tables come at several levels — key, user, team, the global policy, the
`guards.actions` section, the shipped defaults — and the most specific level that says
anything about a finding decides it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.providers.base import REQUEST_LOCATIONS, RESPONSE_LOCATIONS


class Action(StrEnum):
    OFF = "off"  # not even recorded
    LOG = "log"  # audit + metric
    REDACT = "redact"  # replaced by a typed placeholder in what is forwarded
    BLOCK = "block"  # a provider-shaped 403 (requests) or the end of the response (output)


# Stronger actions win when one rule fires several times in one place.
STRENGTH = {Action.OFF: 0, Action.LOG: 1, Action.REDACT: 2, Action.BLOCK: 3}
LOCATION_KEYS = frozenset((*REQUEST_LOCATIONS, *RESPONSE_LOCATIONS, "request", "response", "default"))

# Shipped defaults (issue 6): block credentials in requests, log injection except in tool
# results (where it is blocked: text an agent fetched, not what its user typed), log PII.
DEFAULT_ACTIONS: Mapping[str, Any] = {
    "credential": {"request": "block", "response": "log"},
    "injection": {"default": "log", "tool_result": "block"},
    "pii": "log",
}


def group_of(location: str) -> str:
    return "response" if location in RESPONSE_LOCATIONS else "request"


@dataclass(frozen=True, slots=True)
class ActionTable:
    """One level's actions, parsed: (selector, location key) -> action."""

    entries: Mapping[tuple[str, str], Action] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, selectors: Iterable[str], where: str = "actions") -> ActionTable:
        """Parse a table from its config form; `selectors` are the rule ids and categories known."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a mapping of rule or category -> action")
        known = frozenset(selectors)
        entries: dict[tuple[str, str], Action] = {}
        for selector, spec in raw.items():
            if selector not in known:
                raise ValueError(
                    f"{where}.{selector}: not a rule id or category (known: {', '.join(sorted(known))})"
                )
            per_location = spec if isinstance(spec, Mapping) else {"default": spec}
            for location, action in per_location.items():
                if location not in LOCATION_KEYS:
                    raise ValueError(
                        f"{where}.{selector}.{location}: unknown location "
                        f"(known: {', '.join(sorted(LOCATION_KEYS))})"
                    )
                entries[(str(selector), str(location))] = _action(action, f"{where}.{selector}.{location}")
        return cls(entries)

    def lookup(self, rule: str, category: str, location: str) -> Action | None:
        """This table's action for a finding, or None when it says nothing about it."""
        if not self.entries:
            return None
        group = group_of(location)
        for selector in (rule, category):
            for key in (location, group, "default"):
                action = self.entries.get((selector, key))
                if action is not None:
                    return action
        return None


def _action(value: Any, where: str) -> Action:
    if value is False:  # YAML reads a bare `off` as false
        return Action.OFF
    try:
        return Action(str(value))
    except ValueError:
        raise ValueError(f"{where}: one of {', '.join(a.value for a in Action)}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class ActionResolver:
    """The action tables that apply to one caller, most specific first."""

    tables: tuple[ActionTable, ...]
    bypass: bool = False  # a trusted caller: everything is only logged (and the row flagged)

    def action(self, rule: str, category: str, location: str) -> Action:
        for table in self.tables:
            action = table.lookup(rule, category, location)
            if action is not None:
                return Action.LOG if self.bypass and action is not Action.OFF else action
        return Action.LOG
