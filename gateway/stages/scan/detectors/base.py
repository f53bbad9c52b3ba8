"""What a detector is, and the validators that several categories share.

How to write a pattern (tests/stages/test_scan_detectors.py enforces the first three):

* Patterns are matched against the **lower-cased** text (`fold_case`), so write them in lower
  case. The validator, if any, receives the **original** text of the value, so it can check
  case (an AWS key id is upper case, "DAN" is a jailbreak but "Dan" is a name).
* Every quantifier is bounded, and quantifiers nest only with small bounds, so the work per
  start position is bounded whatever the input. A run followed by a required token is
  possessive (``{8,4096}+``) so a failed match does not backtrack through the run.
* A pattern captures at most one value: the capture group that took part in the match, or
  else the whole match. Its span is what a match reports; a finding never carries it.
* Prefer to start with a literal: Python's `re` (the reference engine) then jumps between
  occurrences of it instead of trying every position, and the fast engine derives a selective
  prefilter from it. A left-boundary check therefore goes *after* the literal, as a look-behind
  that includes it: ``sk-(?<![a-z0-9_-]sk-)`` means "sk- not preceded by a token character".
  A rule may have several patterns for the same reason (one literal each).
* Use explicit classes (``[0-9]``, ``[a-z0-9_]``) rather than ``\\d`` / ``\\w``: on `str` those
  are Unicode-wide in Python and the prefilter can only approximate them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    CREDENTIAL = "credential"
    INJECTION = "injection"
    PII = "pii"


class Severity(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    """One rule: a stable id, what kind of finding it is, and the patterns that fire it."""

    rule: str
    category: Category
    severity: Severity
    patterns: tuple[str, ...]
    validator: Validator | None = None  # False means "looked like it, but is not" (placeholders)
    description: str = ""
    # A cheap test of the whole lower-cased text, False only where no pattern can match: it
    # spares the reference engine a pass. The Hyperscan engine's prefilter does that job.
    gate: Callable[[str], bool] | None = None
    enabled_by_default: bool = True  # False: runs only when configuration names it


# --- validators: cut false positives; each receives the original text of the value ---------

# Values that stand for a secret rather than being one (matched lower-cased, anywhere).
_PLACEHOLDER = re.compile(
    r"your|example|sample|placeholder|change_?me|redacted|dummy|fake|todo|fixme|insert|replace"
    r"|xxxx|\*\*\*\*|\.\.\.\.|[<>]|\{\{|\}\}|\$\{"
)
_TRIVIAL_VALUES = frozenset({"123456", "1234567", "12345678", "123456789", "1234567890"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_.]*")  # letters, "_" and "." only: a name in code
_DIGIT = re.compile(r"[0-9]")


def is_placeholder(value: str) -> bool:
    """`value` reads as a stand-in for a secret (``your-key``, ``xxxx``, ``<token>``, ``${VAR}``)."""
    return _PLACEHOLDER.search(value.lower()) is not None


def char_classes(value: str) -> int:
    """How many of lower case, upper case and digits appear in `value`."""
    return (value != value.upper()) + (value != value.lower()) + (_DIGIT.search(value) is not None)


def random_token(value: str) -> bool:
    """A machine-made secret: mixes character classes, not repetitive, not a placeholder."""
    return len(set(value)) >= 8 and char_classes(value) >= 2 and not is_placeholder(value)


def plausible_password(value: str) -> bool:
    """An assigned value that is a literal secret, not a placeholder or a reference in code.

    Not secrets: shorter than 6 characters; placeholders (``<your password>``, ``changeme``,
    ``xxxx``); references (``$DB_PASS``, ``%(pw)s``, ``{{ vault }}``, ``os.environ[...]``,
    ``get_pw()``); paths and URLs; names made only of letters, ``_`` and ``.``
    (``password=password``, ``api_key=settings.api_key``); and low-variety values.
    """
    value = value.strip()
    if len(value) < 6 or value in _TRIVIAL_VALUES:
        return False
    if value[0] in "$%{[(<`/~\\" or "(" in value or "[" in value or "://" in value:
        return False
    if _IDENTIFIER.fullmatch(value) or is_placeholder(value):
        return False
    return len(set(value)) >= 4


def prefixed_token(*prefixes: str) -> Validator:
    """The original text starts with one of `prefixes` exactly (case-sensitive) and the rest is random."""

    def check(value: str) -> bool:
        prefix = next((p for p in prefixes if value.startswith(p)), None)
        return prefix is not None and random_token(value[len(prefix) :])

    return check


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    counts = Counter(value).values()
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts)
