"""Runs the detector table over a text and reports which rules fired where: the reference engine.

The engine is Python's `re`: each pattern of the table compiled on its own and run over a
lower-cased copy of the text. A single alternation of all of them was measured at ~60x
slower (2.3 s against 35 ms for 1 MB): `re` tries every branch at every position, while a
pattern that starts with a literal lets it skip to the next occurrence of that literal.
Its results define what the faster engines behind `ScanEngine` (engines.py) must report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple, Protocol

from gateway.stages.scan.detectors import Detector


class Match(NamedTuple):
    """A rule fired on text[start:end] (the secret value, or the whole signature)."""

    rule: str
    start: int
    end: int


class ScanEngine(Protocol):
    """What the scan stage needs from an engine: its detectors by rule id, and `scan`."""

    @property
    def detectors(self) -> Mapping[str, Detector]: ...

    def scan(self, text: str, *, first_per_rule: bool = False) -> list[Match]: ...


def fold_case(text: str) -> str:
    """Lower-case `text` one code point at a time, keeping every index aligned with the original.

    U+0130 (İ) is the only code point whose lower case is two code points long, and Σ the
    only one whose lower case depends on its neighbours (U+03C3, or U+03C2 ending a word): both
    are mapped first, so that folding a slice gives the same characters as folding the whole.
    """
    if text.isascii():
        return text.lower()
    if "\u0130" in text:
        text = text.replace("\u0130", "i")
    if "\u03a3" in text:
        text = text.replace("\u03a3", "\u03c3")
    return text.lower()


class Scanner:
    """The detector table compiled for Python's `re`."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self._detectors: dict[str, Detector] = {}
        self._compiled: list[tuple[Detector, tuple[re.Pattern[str], ...]]] = []
        for detector in detectors:
            if detector.rule in self._detectors:
                raise ValueError(f"duplicate scan rule id {detector.rule!r}")
            self._detectors[detector.rule] = detector
            self._compiled.append(
                (detector, tuple(compile_pattern(detector.rule, p) for p in detector.patterns))
            )

    @property
    def detectors(self) -> Mapping[str, Detector]:
        return self._detectors

    def scan(self, text: str, *, first_per_rule: bool = False) -> list[Match]:
        """Every validated match in `text`, ordered by position.

        With `first_per_rule`, stop looking for a rule once it has fired: enough to say
        which rules fired, and bounded work when an input repeats one signature.
        """
        folded = fold_case(text)
        found: set[Match] = set()
        for detector, patterns in self._compiled:
            if detector.gate is not None and not detector.gate(folded):
                continue
            matches = _validated(detector, patterns, text, folded)
            if first_per_rule:
                first = next(matches, None)
                if first is not None:
                    found.add(first)
            else:
                found.update(matches)
        return sorted(found, key=match_order)


def match_order(match: Match) -> tuple[int, str, int]:
    """How every engine orders its matches: by position, then rule id."""
    return match.start, match.rule, match.end


def validated_in(
    detector: Detector,
    pattern: re.Pattern[str],
    text: str,
    folded: str,
    window: tuple[int, int] | None = None,
    offset: int = 0,
) -> Iterator[Match]:
    """The validated matches of `pattern` in `folded` (within `window`), spans in `text`.

    `folded` may be the folded copy of a slice of `text` that starts at `offset`.
    """
    found = pattern.finditer(folded) if window is None else pattern.finditer(folded, *window)
    for m in found:
        start, end = m.span(m.lastindex or 0)  # the value group, else the whole match
        start, end = start + offset, end + offset
        if detector.validator is None or detector.validator(text[start:end]):
            yield Match(detector.rule, start, end)


def _validated(
    detector: Detector, patterns: tuple[re.Pattern[str], ...], text: str, folded: str
) -> Iterator[Match]:
    for pattern in patterns:
        yield from validated_in(detector, pattern, text, folded)


def compile_pattern(rule: str, source: str) -> re.Pattern[str]:
    """`source` compiled, or a ValueError that names its rule."""
    try:
        return re.compile(source)
    except re.error as exc:
        raise ValueError(f"scan rule {rule!r}: bad pattern {source!r}: {exc}") from None
