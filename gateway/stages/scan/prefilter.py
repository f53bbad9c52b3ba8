"""Derives, from a detector pattern, a simpler pattern that a multi-pattern engine can run.

The detector patterns are Python `re` patterns with look-arounds, possessive runs and capture
groups, matched against the case-folded text. Hyperscan and RE2 support none of those, and
refuse large bounded repeats. So each pattern gets a *prefilter*: a contiguous run of its
elements (a "head"), with assertions dropped, groups made plain, large repeats cut to their
minimum and case folding spelled out as character classes, so that it runs on the original
text. The head matches wherever the pattern could match (a superset), and says where:

* every match of the pattern starting at `s` contains a head match that ends at some `e`
  with ``e - s`` within `start_offsets`, so Hyperscan's end offsets bound the possible starts;
* the pattern examines at most `reach` characters from `s` onwards (look-aheads included),
  and at most `behind` characters before `s` (look-behinds, ``\\b``), which bounds the
  window the reference pattern must see to decide a match at `s`.

The head is chosen to contain as many literal characters as possible (``@`` of an email
rather than its local part), since literals are what make a prefilter selective.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_CODE_POINT = 0x10FFFF
DEFAULT_MAX_REPEAT = 128  # larger bounded repeats are cut (Hyperscan: "Pattern is too large")
HEAD_WIDTH = 12  # a head stops once every match of it is this long: selective enough, quicker to compile
HEAD_SPAN = 160  # nor may it grow longer than this: a match's start would be that uncertain
BRANCH_WIDTH = 8  # and each alternative of an alternation once it is this long
GOOD_ENOUGH_LITERALS = 3  # a head from the pattern's start with this many literals is kept


def fold_char(char: str) -> str:
    """The case fold of one code point, as `fold_case` applies it (always one code point)."""
    if char == "\u0130":  # İ: lower() gives "i" + combining dot
        return "i"
    if (
        char == "\u03a3"
    ):  # capital sigma: lower() picks a final or medial sigma from context; folding must not
        return "\u03c3"
    return char.lower()


# Code points outside ASCII whose fold is ASCII (İ -> i, Kelvin sign K -> k). The prefilters
# run on a copy of the text with these already folded (`prefilter_text`): keeping them out of
# every [Ii] and [Kk] class keeps those classes one byte wide, which Hyperscan scans far faster.
_FOLDED_TO_ASCII = {"\u0130": "i", "\u212a": "k"}


def prefilter_text(text: str) -> str:
    """`text` as the prefilters expect it: same length, İ and the Kelvin sign folded."""
    if text.isascii():
        return text
    for char, folded in _FOLDED_TO_ASCII.items():
        if char in text:
            text = text.replace(char, folded)
    return text


@functools.cache
def _cased() -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """Code points whose fold differs from themselves (sorted), and each fold's such preimages.

    Computed once (0.2 s): a constant of the Unicode database, too long to write out.
    """
    unfold: dict[int, list[int]] = {}
    for code in range(MAX_CODE_POINT + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        folded = fold_char(chr(code))
        if folded != chr(code) and chr(code) not in _FOLDED_TO_ASCII:
            unfold.setdefault(ord(folded), []).append(code)
    cased = sorted([*(code for codes in unfold.values() for code in codes), *map(ord, _FOLDED_TO_ASCII)])
    return tuple(cased), {folded: tuple(codes) for folded, codes in unfold.items()}


Ranges = tuple[tuple[int, int], ...]
Item = tuple[Any, Any]  # (opcode, argument), as re's parser gives them


def _normalise(ranges: list[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


@functools.lru_cache(maxsize=1024)
def preimage(ranges: Ranges) -> Ranges:
    """The code points whose fold falls in `ranges`: what to match in the unfolded text."""
    cased, unfold = _cased()
    result: list[tuple[int, int]] = []
    for lo, hi in ranges:
        # The range minus the code points that fold to something else…
        start = lo
        for code in cased[bisect.bisect_left(cased, lo) : bisect.bisect_right(cased, hi)]:
            if code > start:
                result.append((start, code - 1))
            start = code + 1
        if start <= hi:
            result.append((start, hi))
        # … plus those that fold into it.
        if hi - lo < len(unfold):
            targets = [c for c in range(lo, hi + 1) if c in unfold]
        else:
            targets = [c for c in unfold if lo <= c <= hi]
        for folded in targets:
            result.extend((code, code) for code in unfold[folded])
    return _normalise([(lo, hi) for lo, hi in result if not (lo >= 0xD800 and hi <= 0xDFFF)])


def _whitespace() -> Ranges:
    # Python's \s on str is str.isspace(); every such code point is below U+3001.
    return _normalise([(c, c) for c in range(0x3001) if chr(c).isspace()])


def _escape(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


def _class_expression(ranges: Ranges, negate: bool) -> str:
    if not negate and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _escape(ranges[0][0])
    body = "".join(_escape(lo) if lo == hi else f"{_escape(lo)}-{_escape(hi)}" for lo, hi in ranges)
    return f"[{'^' if negate else ''}{body}]"


ANY_CHAR = "[\\s\\S]"


@dataclass(frozen=True, slots=True)
class _Piece:
    """A translated element. Not `complete`: it matches only a prefix of what the element matches."""

    expression: str
    min_width: int
    max_width: int
    complete: bool
    literals: int  # literal characters every match contains: how selective it is


_NOTHING = _Piece("", 0, 0, False, 0)  # no usable translation: the head stops before it
_ZERO_WIDTH = _Piece("", 0, 0, True, 0)  # an assertion: dropped, matches a superset


@dataclass(frozen=True, slots=True)
class Prefilter:
    """A multi-engine-friendly superset of one detector pattern; see the module docstring."""

    expression: str | None  # None: no usable head, the pattern must run over the whole text
    start_offsets: tuple[int, int]  # (lo, hi): a head match ending at e means starts in [e-hi, e-lo]
    reach: int | None  # None: unbounded
    behind: int


class _Translator:
    def __init__(self, flags: int, max_repeat: int) -> None:
        self.dotall = bool(flags & re.DOTALL)
        self.max_repeat = max_repeat

    def sequence(self, items: list[Item], width: int = HEAD_WIDTH, top: bool = False) -> _Piece:
        """`items` in sequence. At the top (the head itself), two refinements keep reports few:

        * a variable repeat that ends the pattern is cut to its minimum: the head needs only a
          prefix, and each extra length would be one more report;
        * a left boundary written the table's way, ``sk-(?<![a-z0-9_-]sk-)`` (a negative
          look-behind of one character class followed by what the head matched so far),
          becomes ``(?:^|[^a-z0-9_-])sk-``: the boundary character joins the head.
        """
        expression: list[str] = []
        low, high, literals = 0, 0, 0
        consuming = [i for i, (op, _) in enumerate(items) if str(op) not in ("ASSERT", "ASSERT_NOT", "AT")]
        last_repeat: tuple[int, Item, _Piece] | None = None  # to cut if the head stops
        complete = True
        for position, item in enumerate(items):
            if top and low == high and (boundary := self.left_boundary(item, items[:position])):
                expression.insert(0, boundary)
                high += 1
                continue
            cut = top and consuming and position == consuming[-1] and _is_repeat(item)
            piece = self.item(item, shortest=bool(cut))
            if top and expression and high + piece.max_width > HEAD_SPAN:
                complete = False  # a head spanning more makes a wide range of possible starts
                break
            if not piece.expression and not piece.complete:
                complete = False
                break
            last_repeat = (len(expression), item, piece) if top and _is_repeat(item) else None
            expression.append(piece.expression)
            low, high, literals = low + piece.min_width, high + piece.max_width, literals + piece.literals
            if not piece.complete or (low >= width and item is not items[-1]):
                complete = False
                break
        if not complete and last_repeat is not None:
            # The head stops after a repeat: its shortest prefix suffices, and reports once.
            index, item, piece = last_repeat
            shortest = self.item(item, shortest=True)
            if shortest.expression and shortest.max_width < piece.max_width:
                expression[index] = shortest.expression
                low += shortest.min_width - piece.min_width
                high += shortest.max_width - piece.max_width
                literals += shortest.literals - piece.literals
        return _Piece("".join(expression), low, high, complete, literals)

    def left_boundary(self, item: Item, before: list[Item]) -> str | None:
        """``(?:^|[^C])`` for ``(?<!C<before>)`` with C one character class, else None."""
        op, av = item
        if str(op) != "ASSERT_NOT":
            return None
        direction, sub = av
        content = list(sub)
        if direction != -1 or content[1:] != before or not content:
            return None
        piece = self.item(content[0])
        if not piece.complete or piece.min_width != 1 or piece.max_width != 1 or "|" in piece.expression:
            return None
        if piece.expression.startswith("[^"):
            return None  # a negated class: its complement is not a class here
        complement = (
            "[^" + piece.expression[1:] if piece.expression.startswith("[") else f"[^{piece.expression}]"
        )
        return f"(?:^|{complement})"

    def item(self, item: Item, shortest: bool = False) -> _Piece:
        op, av = item
        name = str(op)
        if name == "LITERAL":
            assert isinstance(av, int)
            return self.char_class(((av, av),), negate=False, literals=1)
        if name == "NOT_LITERAL":
            assert isinstance(av, int)
            return self.char_class(((av, av),), negate=True)
        if name == "ANY":
            return _Piece(ANY_CHAR, 1, 1, True, 0) if self.dotall else self.char_class(((10, 10),), True)
        if name == "IN":
            return self.set_items(av)
        if name == "BRANCH":
            return self.branch(av[1])
        if name == "SUBPATTERN":
            _group, add_flags, _del_flags, sub = av
            if add_flags & (re.IGNORECASE | re.DOTALL):
                return _NOTHING
            return self.group(self.sequence(list(sub)))
        if name == "ATOMIC_GROUP":
            return self.group(self.sequence(list(av)))
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = av
            return self.repeat(low, high, self.sequence(list(sub)), shortest)
        if name in ("ASSERT", "ASSERT_NOT", "AT"):
            return _ZERO_WIDTH
        return _NOTHING  # back-references and anything new: stop the head here

    def char_class(self, ranges: Ranges, negate: bool, literals: int = 0) -> _Piece:
        image = preimage(_normalise(list(ranges)))
        if not image:
            return _NOTHING if not negate else _Piece(ANY_CHAR, 1, 1, True, 0)
        return _Piece(_class_expression(image, negate), 1, 1, True, literals)

    def set_items(self, items: list[Item]) -> _Piece:
        negate, ranges = False, []
        for op, av in items:
            name = str(op)
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                ranges.append((av, av))
            elif name == "RANGE":
                ranges.append(av)
            elif name == "CATEGORY" and str(av) == "CATEGORY_SPACE":
                ranges.extend(_whitespace())
            else:  # \d, \w, \S… inside a class: any character is a safe superset
                return _Piece(ANY_CHAR, 1, 1, True, 0) if not negate else _NOTHING
        literal = 1 if not negate and len(ranges) == 1 and ranges[0][0] == ranges[0][1] else 0
        return self.char_class(tuple(ranges), negate, literal)

    def branch(self, alternatives: list[list[Item]]) -> _Piece:
        pieces = [self.sequence(list(alternative), BRANCH_WIDTH) for alternative in alternatives]
        if any(not p.expression and not p.complete for p in pieces):
            return _NOTHING
        return _Piece(
            "(?:" + "|".join(p.expression for p in pieces) + ")",
            min(p.min_width for p in pieces),
            max(p.max_width for p in pieces),
            all(p.complete for p in pieces),
            min(p.literals for p in pieces),
        )

    @staticmethod
    def group(piece: _Piece) -> _Piece:
        if not piece.expression:
            return piece
        return _Piece(
            f"(?:{piece.expression})", piece.min_width, piece.max_width, piece.complete, piece.literals
        )

    def repeat(self, low: int, high: int, sub: _Piece, shortest: bool = False) -> _Piece:
        """`sub`{low,high}; cut to its minimum count (a prefix) when too long or `shortest`."""
        if not sub.expression:
            return sub if sub.complete else _NOTHING
        if not sub.complete:
            return sub if low >= 1 else _NOTHING
        atom = sub.expression if _is_atom(sub.expression) else f"(?:{sub.expression})"
        if high == sre.MAXREPEAT or high > self.max_repeat or (shortest and low < high):
            count = min(low, self.max_repeat)
            if count == 0:
                return _NOTHING
            return _Piece(
                f"{atom}{{{count}}}",
                count * sub.min_width,
                count * sub.max_width,
                False,
                count * sub.literals,
            )
        return _Piece(
            f"{atom}{{{low},{high}}}", low * sub.min_width, high * sub.max_width, True, low * sub.literals
        )


_ATOM = re.compile(r"\[(?:[^\]\\]|\\.)*\]|\\x\{[0-9a-f]+\}|[0-9a-z]")


def _is_atom(expression: str) -> bool:
    return _ATOM.fullmatch(expression) is not None or (
        expression.startswith("(?:") and _balanced_group(expression)
    )


def _balanced_group(expression: str) -> bool:
    """`expression` is one (?:…) group, not two side by side."""
    depth, escaped, in_class = 0, False, False
    for i, char in enumerate(expression):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and i != len(expression) - 1:
                return False
    return depth == 0


def _led_by_literal(items: list[Item]) -> bool:
    """The first character any match of `items` consumes is a literal one."""
    for op, av in items:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT", "AT"):
            continue
        if name == "LITERAL":
            return True
        if name == "SUBPATTERN":
            return _led_by_literal(list(av[-1]))
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            return av[0] >= 1 and _led_by_literal(list(av[2]))
        return False
    return False


def _is_repeat(item: Item) -> bool:
    return str(item[0]) in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _reach(items: list[Item]) -> float:
    """How many characters from the start a match attempt may examine (look-aheads included)."""
    total = 0.0
    for op, av in items:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN", "AT"):
            total += 1  # AT: \b and $ peek at the next character
        elif name == "BRANCH":
            total += max(_reach(list(alternative)) for alternative in av[1])
        elif name == "SUBPATTERN":
            total += _reach(list(av[-1]))
        elif name == "ATOMIC_GROUP":
            total += _reach(list(av))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _low, high, sub = av
            total += math.inf if high == sre.MAXREPEAT else high * _reach(list(sub))
        elif name in ("ASSERT", "ASSERT_NOT"):
            direction, sub = av
            total += _reach(list(sub)) if direction == 1 else 0
        else:
            return math.inf
    return total


def _behind(items: list[Item]) -> float:
    """How far before the start look-behinds (and \\b) may look; a generous bound."""
    total = 0.0
    for op, av in items:
        name = str(op)
        if name == "AT":
            total = max(total, 1)
        elif name in ("ASSERT", "ASSERT_NOT"):
            direction, sub = av
            width = sub.getwidth()[1] if direction == -1 else 0
            total = max(total, width + _behind(list(sub)))
        elif name == "BRANCH":
            total = max(total, *(_behind(list(alternative)) for alternative in av[1]))
        elif name in ("SUBPATTERN",):
            total = max(total, _behind(list(av[-1])))
        elif name == "ATOMIC_GROUP":
            total = max(total, _behind(list(av)))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            total = max(total, _behind(list(av[2])))
    return total


def derive_prefilter(source: str, max_repeat: int = DEFAULT_MAX_REPEAT) -> Prefilter:
    """The prefilter of one detector pattern (see the module docstring)."""
    parsed = sre_parse.parse(source)
    items = list(parsed)
    reach = _reach(items)
    behind = int(min(_behind(items), MAX_CODE_POINT)) + 1
    fallback = Prefilter(None, (0, 0), None if math.isinf(reach) else int(reach), behind)
    if parsed.state.flags & re.IGNORECASE:
        return fallback
    translator = _Translator(parsed.state.flags, max_repeat)
    # The most literal characters wins; then a head that starts with one (Hyperscan finds
    # literals fast, a leading class costs it work at every position); then the earliest.
    best: tuple[tuple[int, bool, int], _Piece, tuple[int, int]] | None = None
    for i in range(len(items)):
        skip_low, skip_high = sre_parse.SubPattern(parsed.state, items[:i]).getwidth()
        if skip_high >= sre.MAXREPEAT:
            break
        head = translator.sequence(items[i:], top=True)
        if head.min_width == 0:
            continue
        score = (head.literals, _led_by_literal(items[i:]), -i)
        if best is None or score > best[0]:
            best = (score, head, (skip_low, skip_high))
        if i == 0 and score[:2] >= (GOOD_ENOUGH_LITERALS, True):
            break  # starting at the start keeps the range of possible starts narrow
    if best is None:
        return fallback
    _score, head, (skip_low, skip_high) = best
    return Prefilter(
        head.expression,
        (skip_low + head.min_width, skip_high + head.max_width),
        fallback.reach,
        behind,
    )
