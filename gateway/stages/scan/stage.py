"""The request scanner as a pre-flight stage, in observe mode: it records findings, never blocks."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.audit.record import Finding
from gateway.stages.base import Decision, StageContext
from gateway.stages.scan.detectors import DETECTORS, Detector, Severity
from gateway.stages.scan.scanner import ScanEngine, Scanner

log = logging.getLogger(__name__)

# Findings about the scan itself rather than the request, so that an audit row shows a
# request was not (fully) scanned instead of looking clean.
COVERAGE = "coverage"
SCAN_TRUNCATED = "scan_truncated"
SCAN_ERROR = "scan_error"


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Which rules run, how much text is scanned, and how many results are remembered.

    `enabled_rules` None means every rule in the table; `disabled_rules` are then removed.
    A text longer than `max_text_chars` is scanned up to that length; once
    `max_request_chars` have been scanned for one request, later texts are skipped. Either
    cut adds a `scan_truncated` finding. `cache_entries` texts' results are remembered
    (keyed by hash), because agents resend the whole conversation on every turn; 0 disables.
    """

    enabled_rules: frozenset[str] | None = None
    disabled_rules: frozenset[str] = frozenset()
    max_text_chars: int = 1_000_000
    max_request_chars: int = 4_000_000
    cache_entries: int = 4096

    def __post_init__(self) -> None:
        if self.max_text_chars <= 0 or self.max_request_chars <= 0:
            raise ValueError("scan: max_text_chars and max_request_chars must be positive")
        if self.cache_entries < 0:
            raise ValueError("scan: cache_entries must be 0 (off) or more")

    def select(self, table: Iterable[Detector]) -> tuple[Detector, ...]:
        """The detectors of `table` these options turn on; an unknown rule id is an error."""
        table = tuple(table)
        known = {d.rule for d in table}
        named = (self.enabled_rules or frozenset()) | self.disabled_rules
        if unknown := sorted(named - known):
            raise ValueError(
                f"scan: unknown rule id(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        enabled = known if self.enabled_rules is None else self.enabled_rules
        return tuple(d for d in table if d.rule in enabled and d.rule not in self.disabled_rules)


EngineFactory = Callable[[Sequence[Detector]], ScanEngine]


class ScanStage:
    """Scans every text of a request for leaked credentials and injection signatures.

    Observe mode: always allows, with one `log` finding per (rule, location).
    """

    name = "scan"

    def __init__(self, options: ScanOptions | None = None, *, engine: EngineFactory = Scanner) -> None:
        self.options = options or ScanOptions()
        self.engine = engine(self.options.select(DETECTORS))
        self._recent: OrderedDict[tuple[int, int], tuple[str, ...]] = OrderedDict()

    async def pre_flight(self, ctx: StageContext) -> Decision:
        return Decision.allow(findings=self.findings(ctx))

    def findings(self, ctx: StageContext) -> tuple[Finding, ...]:
        """One finding per (rule, location), in the order first seen."""
        found: dict[tuple[str, str], Finding] = {}

        def add(rule: str, category: str, severity: str, location: str) -> None:
            found.setdefault((rule, location), Finding(rule, category, severity, location, action="log"))

        budget = self.options.max_request_chars
        try:
            for location, text in ctx.view.scan_targets():
                if not isinstance(text, str) or not text:
                    continue
                location = str(location)
                limit = min(self.options.max_text_chars, budget)
                if len(text) > limit:
                    add(SCAN_TRUNCATED, COVERAGE, str(Severity.LOW), location)
                    if limit == 0:
                        continue
                    text = text[:limit]
                budget -= len(text)
                for rule in self._rules_in(text):
                    detector = self.engine.detectors[rule]
                    add(rule, str(detector.category), str(detector.severity), location)
        except Exception:
            # Observe mode must not turn an odd request body into a denial, but the audit row
            # has to show that the scan did not finish.
            log.exception("scan stage failed on a request; findings so far are kept")
            add(SCAN_ERROR, COVERAGE, str(Severity.LOW), "request")
        return tuple(found.values())

    def _rules_in(self, text: str) -> tuple[str, ...]:
        """The rules that fire on `text`, from the cache when this text was seen recently."""
        # str hashes are keyed per process (unless PYTHONHASHSEED is fixed), so a collision
        # cannot be crafted to hide a text behind another one's result.
        key = (hash(text), len(text))
        rules = self._recent.get(key)
        if rules is not None:
            self._recent.move_to_end(key)
            return rules
        rules = tuple(m.rule for m in self.engine.scan(text, first_per_rule=True))
        if self.options.cache_entries:
            self._recent[key] = rules
            if len(self._recent) > self.options.cache_entries:
                self._recent.popitem(last=False)
        return rules
