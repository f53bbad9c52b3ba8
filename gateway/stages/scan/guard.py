"""The guard: detectors, their allowlists and the action tables, applied to one text at a time.

Used before the call (gateway/stages/scan/stage.py) and on the model's output
(gateway/stages/scan/output.py). A text is scanned once per process while it is remembered:
agents resend the whole conversation on every turn.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from gateway.audit.record import Finding
from gateway.auth.policy import PolicyChain
from gateway.providers.base import RESPONSE_LOCATIONS
from gateway.stages.scan.actions import STRENGTH, Action, ActionResolver, ActionTable
from gateway.stages.scan.detectors import ALL_DETECTORS, Category, Detector
from gateway.stages.scan.engines import build_engine
from gateway.stages.scan.scanner import Match, ScanEngine
from gateway.stages.scan.settings import DEFAULT_TABLE, GuardSettings

log = logging.getLogger(__name__)

# Findings about the scan itself rather than the content, so that an audit row shows a text was
# not (fully) scanned instead of looking clean.
COVERAGE = "coverage"
SCAN_TRUNCATED = "scan_truncated"
FLAG_BYPASS = "guards.bypass"
SENSITIVE = frozenset((Category.CREDENTIAL, Category.PII))  # what audit redaction hides

EngineFactory = Callable[[Sequence[Detector]], ScanEngine]


def placeholder(rule: str) -> str:
    """What a redacted match becomes: typed, so a reader (or the model) knows what was there."""
    return f"[REDACTED:{rule}]"


@dataclass(frozen=True, slots=True)
class Hit:
    """One validated, not allowlisted match in a text, with the action that applies to it."""

    rule: str
    category: str
    severity: str
    start: int
    end: int
    action: Action


@dataclass(frozen=True, slots=True)
class _Resolved:
    resolver: ActionResolver
    acts_on_output: bool
    watches_output: bool
    policies: tuple[object, ...]


class SensitiveValues:
    """Credential and PII values matched in an exchange, kept (bounded) only while it is in flight,
    so the audit's copies of the content can be redacted even where a preview cut them short."""

    __slots__ = ("_values",)
    LIMIT = 256

    def __init__(self) -> None:
        self._values: dict[str, str] = {}  # value -> rule

    def add_hits(self, text: str, hits: Iterable[Hit]) -> None:
        for hit in hits:
            if hit.category in SENSITIVE and len(self._values) < self.LIMIT:
                self._values.setdefault(text[hit.start : hit.end], hit.rule)

    def update(self, other: SensitiveValues) -> None:
        for value, rule in other._values.items():
            if len(self._values) < self.LIMIT:
                self._values.setdefault(value, rule)

    def items(self) -> list[tuple[str, str]]:
        """(value, rule), longest first, so a value inside another is replaced after it."""
        return sorted(self._values.items(), key=lambda item: -len(item[0]))

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:  # never the values themselves
        return f"SensitiveValues({len(self._values)})"


class Findings:
    """One finding per (rule, location) of an exchange, carrying the strongest action taken."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], Finding] = {}

    def add(self, rule: str, category: str, severity: str, location: str, action: Action) -> None:
        key = (rule, location)
        known = self._found.get(key)
        if known is None or STRENGTH[action] > STRENGTH[Action(known.action)]:
            self._found[key] = Finding(rule, category, severity, location, action=str(action))

    def add_hit(self, hit: Hit, location: str, applied: Action | None = None) -> None:
        self.add(hit.rule, hit.category, hit.severity, location, applied or hit.action)

    def coverage(self, location: str) -> None:
        self.add(SCAN_TRUNCATED, COVERAGE, "low", location, Action.LOG)

    def all(self) -> tuple[Finding, ...]:
        return tuple(self._found.values())


class RecentMatches:
    """The matches of texts scanned lately, by text, least recently used dropped past `entries`.

    Keyed by the text's hash and length, not the text: str hashes are keyed per process (unless
    PYTHONHASHSEED is fixed), so a collision cannot be crafted to hide a text behind another one's
    result, and no content is kept.
    """

    __slots__ = ("_entries", "_found")

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._found: OrderedDict[tuple[int, int], tuple[Match, ...]] = OrderedDict()

    def get(self, text: str) -> tuple[Match, ...] | None:
        key = (hash(text), len(text))
        found = self._found.get(key)
        if found is not None:
            self._found.move_to_end(key)
        return found

    def put(self, text: str, found: tuple[Match, ...]) -> None:
        if self._entries:
            self._found[(hash(text), len(text))] = found
            if len(self._found) > self._entries:
                self._found.popitem(last=False)


class Guard:
    """Scans texts with the enabled detectors and decides, per caller, what each match means."""

    def __init__(self, settings: GuardSettings, engine: EngineFactory | None = None) -> None:
        """`engine` builds the scan engine over the enabled detectors (default: `guards.engine`)."""
        self.settings = settings
        enabled = tuple(d for d in ALL_DETECTORS if d.rule in settings.enabled_rules())
        sensitive = tuple(d for d in enabled if d.category in SENSITIVE)
        if engine is None:
            engine = lambda detectors: build_engine(detectors, settings.engine_name)  # noqa: E731
        self.engine = engine(enabled)
        # The audit's copies lose credentials and PII only: the engine of those rules alone finds
        # the same spans in fewer passes (a 5 KB preview: ~70 µs, not ~105).
        self._redaction_engine = engine(sensitive)
        self.detectors = self.engine.detectors
        self._options = settings.rule_options
        self._recent = RecentMatches(settings.cache_entries)  # every enabled rule
        self._recent_sensitive = RecentMatches(settings.cache_entries)  # the redaction engine's
        self._resolvers: OrderedDict[tuple[int, ...], _Resolved] = OrderedDict()

    # -- who decides ---------------------------------------------------------------------------------

    def resolver(self, chain: PolicyChain | None) -> ActionResolver:
        return self._resolved(chain).resolver

    def acts_on_output(self, chain: PolicyChain | None) -> bool:
        """Whether any enabled rule redacts or blocks the model's output for this caller."""
        return self._resolved(chain).acts_on_output

    def watches_output(self, chain: PolicyChain | None) -> bool:
        """Whether any enabled rule does anything (log included) with the output for this caller."""
        return self._resolved(chain).watches_output

    def _resolved(self, chain: PolicyChain | None) -> _Resolved:
        guards = [policy.guards for _, _, policy in chain.levels] if chain is not None else []
        key = tuple(id(g) for g in guards)
        cached = self._resolvers.get(key)
        if cached is not None:
            return cached
        tables: list[ActionTable] = [g.table for g in guards if g is not None]
        bypass = any(g.bypass for g in guards if g is not None)
        resolver = ActionResolver((*tables, self.settings.table, DEFAULT_TABLE), bypass=bypass)
        output_actions = {
            resolver.action(d.rule, str(d.category), location)
            for d in self.detectors.values()
            for location in RESPONSE_LOCATIONS
        }
        # The policies are kept alive with the entry, so their ids cannot be reused while cached.
        entry = _Resolved(
            resolver,
            acts_on_output=bool(output_actions & {Action.REDACT, Action.BLOCK}),
            watches_output=bool(output_actions - {Action.OFF}),
            policies=tuple(guards),
        )
        self._resolvers[key] = entry
        if len(self._resolvers) > 1024:
            self._resolvers.popitem(last=False)
        return entry

    # -- what is in a text ---------------------------------------------------------------------------

    def matches(self, text: str, cache: bool = True) -> tuple[Match, ...]:
        """Every validated match in `text` that is not allowlisted, by position.

        `cache`: remember the result (texts seen again, like a resent conversation); a stream's
        running text changes with every event and is not worth remembering.
        """
        if not cache:
            return tuple(m for m in self.engine.scan(text) if not self._allowed(m, text))
        found = self._recent.get(text)
        if found is None:
            found = tuple(m for m in self.engine.scan(text) if not self._allowed(m, text))
            self._recent.put(text, found)
        return found

    def hits(self, text: str, location: str, resolver: ActionResolver, cache: bool = True) -> list[Hit]:
        """The matches in `text` with what `resolver` says to do at `location` (`off` dropped)."""
        out = []
        for m in self.matches(text, cache):
            detector = self.detectors[m.rule]
            category = str(detector.category)
            action = resolver.action(m.rule, category, location)
            if action is not Action.OFF:
                out.append(Hit(m.rule, category, str(detector.severity), m.start, m.end, action))
        return out

    def redact_all(self, text: str) -> str:
        """`text` with every credential and PII match replaced, whatever the actions (audit copies).

        Remembered like `matches`: a preview is often a text scanned already (the output of a
        complete body), or one seen before (the start of a resent conversation).
        """
        found = self._recent.get(text)
        if found is None:
            found = self._recent_sensitive.get(text)
        if found is None:
            found = tuple(m for m in self._redaction_engine.scan(text) if not self._allowed(m, text))
            self._recent_sensitive.put(text, found)
        spans = [(m.start, m.end, m.rule) for m in found if self._sensitive(m.rule)]
        return replace_spans(text, spans)

    def audit_redactor(self, sensitive: SensitiveValues | None) -> Callable[[str], str]:
        """Redaction for the audit's copies of one exchange's content: the values matched in it
        (also as JSON escapes them, as a raw-body preview shows them), then every match left."""
        replacements = [
            (form, placeholder(rule))
            for value, rule in (sensitive.items() if sensitive else ())
            for form in dict.fromkeys((value, orjson.dumps(value)[1:-1].decode(), json.dumps(value)[1:-1]))
        ]

        def redact(text: str) -> str:
            for form, replacement in replacements:
                if form in text:
                    text = text.replace(form, replacement)
            return self.redact_all(text)

        return redact

    def _sensitive(self, rule: str) -> bool:
        return self.detectors[rule].category in SENSITIVE

    def _allowed(self, m: Match, text: str) -> bool:
        options = self._options.get(m.rule)
        return options is not None and options.allows(text[m.start : m.end])


def replace_spans(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    """Replace each (start, end, rule) span with its placeholder; overlapping spans merge."""
    ordered = sorted(spans)
    if not ordered:
        return text
    out: list[str] = []
    position = 0
    for start, end, rule in ordered:
        if end <= position:
            continue  # inside a span already replaced
        if start < position:
            start = position
        else:
            out.append(text[position:start])
            out.append(placeholder(rule))
        position = end
    out.append(text[position:])
    return "".join(out)
