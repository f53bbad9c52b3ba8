"""The fast engine: Hyperscan finds, in one pass, every place a rule could match; `re` confirms there.

Hyperscan compiles every pattern's prefilter (prefilter.py) into one database and reports
end offsets in one pass. Clean text costs that pass and nothing else. Each report bounds
where a match may start; the reference pattern (look-arounds, capture group, validator)
is then tried only at those positions (merged into ranges per pattern, in order, matches
not overlapping), so the result is exactly what `finditer` over the whole text gives (see
the equivalence tests), and no text is looked at twice for one pattern.

Two escapes keep the worst case at the reference engine's cost: when reports are dense
(more than the budget: a megabyte of near misses), the scan stops and a second database,
which reports each pattern at most once, says which patterns to run over the whole text;
and a text that is not valid UTF-8 (lone surrogates from JSON escapes) goes to the
reference engine directly.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from re import _parser as sre_parse  # type: ignore[attr-defined]

import hyperscan

from gateway.stages.scan.detectors import Detector
from gateway.stages.scan.prefilter import DEFAULT_MAX_REPEAT, Prefilter, derive_prefilter, prefilter_text
from gateway.stages.scan.scanner import (
    Match,
    Scanner,
    compile_pattern,
    fold_case,
    match_order,
    validated_in,
)

log = logging.getLogger(__name__)

REPORT_BUDGET = 1024  # reports per scan beyond which whole-text scanning is cheaper …
REPORT_BUDGET_PER_BYTE = 1 / 64  # … plus this many per byte of text
SKIP = 64  # start positions one confirming `match` call tries
MERGE_GAP = 16  # candidate start ranges closer than this are confirmed together
FOLD_GAP = 64  # slices of text closer than this are case-folded in one piece


@dataclass(frozen=True, slots=True)
class _Pattern:
    rule_index: int
    compiled: re.Pattern[str]
    prefilter: Prefilter
    # The pattern preceded by a lazy skip of up to SKIP characters and an empty group that
    # marks where the pattern starts: `match(text, pos)` then finds the first match starting
    # in [pos, pos + SKIP], without scanning past it as `search` would.
    skipping: re.Pattern[str]
    literal_prefix: str  # what every match starts with (folded), found with str.find; may be ""


def _skipping(source: str) -> re.Pattern[str]:
    return re.compile(f"(?s:.){{0,{SKIP}}}?()(?:{source})")


def _literal_prefix(source: str) -> str:
    prefix = []
    for op, av in sre_parse.parse(source):
        if str(op) != "LITERAL":
            break
        prefix.append(chr(av))
    return "".join(prefix)


class HyperscanScanner:
    """The detector table behind one Hyperscan database (see the module docstring)."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self._reference = Scanner(detectors)
        self._rules = tuple(self._reference.detectors.values())
        patterns = [
            _Pattern(
                i,
                compile_pattern(d.rule, source),
                derive_prefilter(source),
                _skipping(source),
                _literal_prefix(source),
            )
            for i, d in enumerate(self._rules)
            for source in d.patterns
        ]
        self._patterns, self._windowed, self._presence = _compile_databases(patterns)
        self._always = tuple(i for i, p in enumerate(self._patterns) if p.prefilter.expression is None)
        self._scratch = threading.local()  # Hyperscan scratch space is per thread

    @property
    def detectors(self) -> Mapping[str, Detector]:
        return self._reference.detectors

    def scan(self, text: str, *, first_per_rule: bool = False) -> list[Match]:
        """Every validated match in `text`, ordered by position; the same as `Scanner.scan`."""
        if not text:
            return []
        try:
            data = prefilter_text(text).encode("utf-8")
        except UnicodeEncodeError:
            return self._reference.scan(text, first_per_rule=first_per_rule)
        reports = self._reports(data)
        if reports is None:
            found = self._confirm_whole(text, self._present(data), first_per_rule)
        elif not reports and not self._always:
            return []
        else:
            ends = reports if len(data) == len(text) else _char_offsets(data, reports)
            found = self._confirm_candidates(text, ends, first_per_rule)
        return sorted(set(found), key=match_order)

    # --- the Hyperscan passes ----------------------------------------------------------------

    def _scratch_for(self, name: str, database: hyperscan.Database) -> hyperscan.Scratch:
        scratch = getattr(self._scratch, name, None)
        if scratch is None:
            scratch = hyperscan.Scratch(database)
            setattr(self._scratch, name, scratch)
        return scratch

    def _reports(self, data: bytes) -> list[tuple[int, int]] | None:
        """(pattern, end byte offset) of every prefilter match; None past the report budget."""
        reports: list[tuple[int, int]] = []
        if self._windowed is None:
            return reports
        append = reports.append
        budget = REPORT_BUDGET + int(len(data) * REPORT_BUDGET_PER_BYTE)

        def on_match(pattern: int, _start: int, end: int, _flags: int, _context: object) -> bool:
            append((pattern, end))
            return len(reports) > budget  # True stops the scan

        try:
            self._windowed.scan(
                data, match_event_handler=on_match, scratch=self._scratch_for("w", self._windowed)
            )
        except hyperscan.ScanTerminated:
            return None
        return reports

    def _present(self, data: bytes) -> set[int]:
        """The patterns whose prefilter matches anywhere (each reported once)."""
        present = set(self._always)

        def on_match(pattern: int, _start: int, _end: int, _flags: int, _context: object) -> None:
            present.add(pattern)

        if self._presence is not None:
            self._presence.scan(
                data, match_event_handler=on_match, scratch=self._scratch_for("p", self._presence)
            )
        return present

    # --- confirmation with the reference patterns ---------------------------------------------

    def _confirm_whole(self, text: str, present: set[int], first_per_rule: bool) -> list[Match]:
        """Dense reports: every present pattern over the whole text, as the reference engine does."""
        folded = fold_case(text)
        found: list[Match] = []
        done: set[int] = set()
        for i in sorted(present):
            pattern = self._patterns[i]
            detector = self._rules[pattern.rule_index]
            if pattern.rule_index in done or (detector.gate is not None and not detector.gate(folded)):
                continue
            for match in validated_in(detector, pattern.compiled, text, folded):
                found.append(match)
                if first_per_rule:
                    done.add(pattern.rule_index)
                    break
        return found

    def _confirm_candidates(
        self, text: str, ends: list[tuple[int, int]], first_per_rule: bool
    ) -> list[Match]:
        """The reference patterns' matches, tried only where a report says a match may start."""
        ranges = self._candidates(len(text), ends)
        segments = _Segments(text, [] if text.isascii() else self._margins(ranges, len(text)))
        found: list[Match] = []
        done: set[int] = set()
        for i in sorted(ranges):  # pattern indexes follow the table: rules, then their patterns
            rule_index = self._patterns[i].rule_index
            if rule_index in done:
                continue
            before = len(found)
            self._confirm(i, text, ranges[i], segments, found, first_per_rule)
            if first_per_rule and len(found) > before:
                done.add(rule_index)
        return found

    def _candidates(self, length: int, ends: list[tuple[int, int]]) -> dict[int, list[list[int]]]:
        """Per pattern, merged ranges [first, last] of the positions where a match may start."""
        ranges: dict[int, list[list[int]]] = {i: [[0, length - 1]] for i in self._always}
        patterns = self._patterns
        current, merged, low, high = -1, [[0, 0]], 0, 0
        for i, end in sorted(ends):
            if i != current:
                current, merged = i, []
                ranges[i] = merged
                low, high = patterns[i].prefilter.start_offsets
            first, last = end - high, end - low
            if merged and first <= merged[-1][1] + MERGE_GAP:
                if last > merged[-1][1]:
                    merged[-1][1] = last
            else:
                merged.append([first if first > 0 else 0, last])
        return ranges

    def _margins(self, ranges: dict[int, list[list[int]]], length: int) -> list[tuple[int, int]]:
        """The text the matcher may look at for each range, look-behinds included."""
        margins: list[tuple[int, int]] = []
        for i, pattern_ranges in ranges.items():
            prefilter = self._patterns[i].prefilter
            reach = length if prefilter.reach is None else prefilter.reach + 1
            margins.extend(
                (max(0, first - prefilter.behind), min(length, last + reach))
                for first, last in pattern_ranges
            )
        return margins

    def _confirm(
        self,
        index: int,
        text: str,
        ranges: list[list[int]],
        segments: _Segments,
        found: list[Match],
        first_per_rule: bool,
    ) -> None:
        """Append the pattern's validated matches that start within `ranges`, as `finditer`
        would find them. A match found beyond a range's end is dropped (the text was cut short
        for it); if it is real it lies in a later range and is found there again."""
        pattern = self._patterns[index]
        skipping, exact, prefix = pattern.skipping, pattern.compiled, pattern.literal_prefix
        detector = self._rules[pattern.rule_index]
        rule, validator = detector.rule, detector.validator
        reach = pattern.prefilter.reach
        length = len(text)
        resume = 0  # where the previous match ended: matches do not overlap, as with finditer
        for first, last in ranges:
            offset, folded = segments.around(first)
            stop = (length if reach is None else min(length, last + reach + 1)) - offset
            pos, last = max(resume, first) - offset, last - offset
            while pos <= last:
                if prefix and pos < last:  # jump to where the literal start of a match is
                    pos = folded.find(prefix, pos, last + len(prefix))
                    if pos < 0:
                        break
                if pos == last or prefix:
                    m = exact.match(folded, pos, stop)
                    if m is None:
                        pos += 1
                        continue
                    begin, span = pos, m.span(m.lastindex or 0)
                else:
                    m = skipping.match(folded, pos, stop)
                    if m is None:
                        pos += SKIP + 1
                        continue
                    begin = m.start(1)
                    if begin > last:
                        break
                    group = m.lastindex or 1
                    span = m.span(group) if group != 1 else (begin, m.end())
                pos = m.end() if m.end() > begin else begin + 1
                resume = pos + offset
                start, end = span[0] + offset, span[1] + offset
                if validator is None or validator(text[start:end]):
                    found.append(Match(rule, start, end))
                    if first_per_rule:
                        return


class _Segments:
    """Case-folded slices of the text that cover every window, each folded once."""

    def __init__(self, text: str, ranges: list[tuple[int, int]]) -> None:
        if text.isascii():  # str.lower() is a fast table walk on ASCII: fold it all at once
            self._starts, self._folded = [0], [text.lower()]
            return
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + FOLD_GAP:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._starts = [lo for lo, _ in merged]
        self._folded = [fold_case(text[lo:hi]) for lo, hi in merged]

    def around(self, position: int) -> tuple[int, str]:
        """(offset, folded slice) of the segment holding the window that starts at `position`."""
        if len(self._starts) == 1:
            return 0 if not self._starts[0] else self._starts[0], self._folded[0]
        i = bisect.bisect_right(self._starts, position) - 1
        return self._starts[i], self._folded[i]


# Each UTF-8 byte becomes 1 if it continues a character, else 0: counting the ones before a
# byte offset says how many bytes are not characters of their own.
_CONTINUATION = bytes(1 if 0x80 <= b <= 0xBF else 0 for b in range(256))


def _char_offsets(data: bytes, reports: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Reports with UTF-8 byte offsets turned into str indexes (offsets fall between characters)."""
    continuation = data.translate(_CONTINUATION)
    chars: dict[int, int] = {}
    previous, extra = 0, 0
    for offset in sorted({end for _, end in reports}):
        extra += continuation.count(1, previous, offset)
        chars[offset] = offset - extra
        previous = offset
    return [(pattern, chars[end]) for pattern, end in reports]


def _compile_databases(
    patterns: list[_Pattern],
) -> tuple[tuple[_Pattern, ...], hyperscan.Database | None, hyperscan.Database | None]:
    """The windowed and the presence (one report per pattern) databases of `patterns`.

    A prefilter Hyperscan refuses is derived again with smaller repeats, and dropped (the
    pattern then runs over every text) if even that fails.
    """
    try:
        return tuple(patterns), *_databases(patterns)
    except hyperscan.error:
        patterns = [_accepted(p) for p in patterns]
        return tuple(patterns), *_databases(patterns)


def _databases(patterns: list[_Pattern]) -> tuple[hyperscan.Database | None, hyperscan.Database | None]:
    indexed = [
        (i, p.prefilter.expression) for i, p in enumerate(patterns) if p.prefilter.expression is not None
    ]
    if not indexed:
        return None, None
    ids = [i for i, _ in indexed]
    expressions = [expression.encode() for _, expression in indexed]
    windowed = hyperscan.Database()
    windowed.compile(expressions=expressions, ids=ids, flags=[hyperscan.HS_FLAG_UTF8] * len(ids))
    presence = hyperscan.Database()
    single = hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_SINGLEMATCH
    presence.compile(expressions=expressions, ids=ids, flags=[single] * len(ids))
    return windowed, presence


def _accepted(pattern: _Pattern) -> _Pattern:
    max_repeat = DEFAULT_MAX_REPEAT
    prefilter = pattern.prefilter
    while prefilter.expression is not None:
        try:
            hyperscan.Database().compile(
                expressions=[prefilter.expression.encode()], ids=[0], flags=[hyperscan.HS_FLAG_UTF8]
            )
            break
        except hyperscan.error as exc:
            if max_repeat <= 1:
                log.warning(
                    "scan: no Hyperscan prefilter for %s (%s); it runs on every text",
                    pattern.compiled.pattern,
                    exc,
                )
                prefilter = Prefilter(None, (0, 0), prefilter.reach, prefilter.behind)
                break
            max_repeat //= 4
            prefilter = derive_prefilter(pattern.compiled.pattern, max_repeat)
    return _Pattern(pattern.rule_index, pattern.compiled, prefilter, pattern.skipping, pattern.literal_prefix)
