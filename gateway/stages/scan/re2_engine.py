"""The RE2 engine: an `RE2::Set` of the prefilters says which patterns can match; `re` runs those.

RE2's set matcher answers "which of these patterns occur", not where, so every pattern it
names runs over the whole text. Kept as the alternative the benchmark measures
(bench/scan_engines.py) and as a fallback where Hyperscan has no wheel but RE2 does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import re2

from gateway.stages.scan.detectors import Detector
from gateway.stages.scan.prefilter import derive_prefilter, prefilter_text
from gateway.stages.scan.scanner import Match, Scanner, compile_pattern, fold_case, match_order, validated_in

SET_MAX_MEM = 64 << 20  # the DFA of ~90 prefilters; RE2's default 8 MiB runs out on long texts


class RE2Scanner:
    """The detector table behind one RE2 set (see the module docstring)."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self._reference = Scanner(detectors)
        self._rules: list[tuple[Detector, list[tuple[int | None, re.Pattern[str]]]]] = []
        options = re2.Options()
        options.max_mem = SET_MAX_MEM
        self._set = re2.Set.SearchSet(options)
        self._always = False
        for detector in self._reference.detectors.values():
            patterns: list[tuple[int | None, re.Pattern[str]]] = []
            for source in detector.patterns:
                expression = derive_prefilter(source).expression
                index = None if expression is None else self._set.Add(expression)
                self._always = self._always or index is None
                patterns.append((index, compile_pattern(detector.rule, source)))
            self._rules.append((detector, patterns))
        self._set.Compile()

    @property
    def detectors(self) -> Mapping[str, Detector]:
        return self._reference.detectors

    def scan(self, text: str, *, first_per_rule: bool = False) -> list[Match]:
        """Every validated match in `text`, ordered by position; the same as `Scanner.scan`."""
        if not text:
            return []
        try:
            present = set(self._set.Match(prefilter_text(text)) or ())
        except UnicodeEncodeError:  # lone surrogates: not UTF-8
            return self._reference.scan(text, first_per_rule=first_per_rule)
        if not present and not self._always:
            return []
        folded = fold_case(text)
        found: set[Match] = set()
        for detector, patterns in self._rules:
            candidates = [p for index, p in patterns if index is None or index in present]
            if not candidates or (detector.gate is not None and not detector.gate(folded)):
                continue
            matches = (m for p in candidates for m in validated_in(detector, p, text, folded))
            if first_per_rule:
                first = next(matches, None)
                if first is not None:
                    found.add(first)
            else:
                found.update(matches)
        return sorted(found, key=match_order)
