"""Prompt-injection detectors: override phrases, persona hijacks, fake turns and hidden text."""

from __future__ import annotations

from gateway.stages.scan.detectors.base import Category, Detector, Severity

# --- validators and gates ----------------------------------------------------------------------


def _role_hijack(value: str) -> bool:
    # "You are now DAN" is the jailbreak; "you are now Dan" is someone's name.
    return value.lower() != "dan" or value == "DAN"


def _turn_marker(value: str) -> bool:
    # "\n\nHuman:" and "\nSYSTEM:" fake a turn; "\n\nhuman:" in lower case is just a word.
    return next((c for c in value if c.isalpha()), "").isupper()


def _not_a_flag(value: str) -> bool:
    # Subdivision flags (England, Scotland, Wales) are a black flag followed by up to six
    # tag characters and CANCEL TAG: too short to carry a message.
    return not (value.endswith("\U000e007f") and len(value) <= 7)


def _may_contain_tag_characters(text: str) -> bool:
    # A character-class search visits every position (~20 ms per MB); the UTF-8 lead bytes
    # of U+E0000..U+E007F are found with a literal search after a fast encode (~3 ms per MB).
    if text.isascii():
        return False
    data = text.encode("utf-8", "surrogatepass")
    return b"\xf3\xa0\x80" in data or b"\xf3\xa0\x81" in data


def _not_ascii(text: str) -> bool:
    return not text.isascii()


# --- pattern builders for families that share a shape ------------------------------------

_WS = r"\s{1,3}"
_APOSTROPHE = "['\u2019]"  # typewriter or typographic
_NEGATIONS = ("n't ", "n\u2019t ", "not ", "never ")


def _override(verb: str) -> str:
    """`verb` [all of the] previous|prior|above… instructions|rules…, unless negated."""
    not_negated = "".join(f"(?<!{negation}{verb})" for negation in _NEGATIONS)
    fillers = rf"(?:{_WS}(?:all|any|and|of|the|your|my|these|those|every)){{0,3}}"
    when = r"(?:previous|prior|above|earlier|preceding|foregoing|former|original|initial|system)"
    what = (
        r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|guidance|"
        r"commands?|context|messages?|orders|constraints|programming)"
    )
    return rf"{verb}{not_negated}{fillers}{_WS}{when}{_WS}{what}\b"


_YOU_ARE = rf"you(?:{_WS}are|{_APOSTROPHE}re)"
_UNBOUND = r"(?:unrestricted|unfiltered|uncensored|jailbroken|unlocked|evil)"
_HIJACK_ROLE = rf"(?:(dan)\b|(?:an?{_WS})?{_UNBOUND}{_WS}(?:ai|assistant|model|chatbot|llm|version|mode)\b)"
_JAILBREAK_MODE = rf"(?:developer|dan|jailbreak|god|unrestricted){_WS}mode\b"
# What may follow a Llama "</s>" to open a new turn: another template token or a role label.
_NEXT_TURN = (
    r"(?=[ \t\r\n]{0,4}(?:<s>|<\||\[/?inst\]|<<sys>>|<start_of_turn>"
    r"|(?:system|user|assistant|human)[ \t]{0,2}:))"
)

# Invisible format characters: zero-width space / non-joiner / joiner, word joiner, invisible
# math operators, zero-width no-break space (BOM), Mongolian vowel separator, combining
# grapheme joiner, Hangul fillers.
_ZERO_WIDTH = "[\u200b-\u200d\u2060-\u2064\ufeff\u180e\u034f\u115f\u1160\u3164\uffa0]"
_VARIATION_SELECTOR = "[\ufe00-\ufe0f\U000e0100-\U000e01ef]"
# Embeddings, pop and isolates (LRE RLE PDF LRI RLI FSI PDI); overrides (LRO RLO) are separate.
_BIDI_EMBED = "[\u202a-\u202c\u2066-\u2069]"
_BIDI_OVERRIDE = "[\u202d\u202e]"
_RTL_LETTER = "[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\U00010800-\U00010fff\U0001e800-\U0001efff]"
_BIDI_CONTEXT = 32  # characters either side, on the same line, that make an embedding legitimate


def _bidi_without_rtl_context() -> str:
    """An embedding or isolate with no right-to-left letter within _BIDI_CONTEXT characters.

    Hebrew or Arabic text wraps Latin words in isolates legitimately; in text without any
    right-to-left letter nearby they only reorder what a human sees (Trojan Source).
    Python's look-behind must be fixed-width, hence one per distance.
    """
    behind = "".join(f"(?<!{_RTL_LETTER}[^\n]{{{k}}}{_BIDI_EMBED})" for k in range(_BIDI_CONTEXT))
    ahead = f"(?![^\n]{{0,{_BIDI_CONTEXT - 1}}}{_RTL_LETTER})"
    return _BIDI_EMBED + behind + _BIDI_EMBED + "{0,63}+" + ahead


INJECTION_DETECTORS: tuple[Detector, ...] = (
    Detector(
        rule="instruction_override",
        category=Category.INJECTION,
        severity=Severity.MEDIUM,
        patterns=(
            *(_override(verb) for verb in ("ignore", "disregard", "forget", "override", "bypass")),
            rf"forget{_WS}(?:everything|all){_WS}(?:above|before|so{_WS}far|you{_WS}(?:were|have{_WS}been){_WS}told)\b",
            rf"do{_WS}not{_WS}follow{_WS}(?:the|your|any){_WS}(?:previous|prior|above|original|system){_WS}instructions\b",
        ),
        description="Asks the model to drop the instructions it was given.",
    ),
    Detector(
        rule="role_hijack",
        category=Category.INJECTION,
        severity=Severity.MEDIUM,
        patterns=(
            rf"{_YOU_ARE}{_WS}(?:now{_WS}{_HIJACK_ROLE}|(?:now{_WS})?in{_WS}{_JAILBREAK_MODE})",
            rf"act(?:ing)?{_WS}as{_WS}{_HIJACK_ROLE}",
            rf"pretend{_WS}(?:to{_WS}be|{_YOU_ARE}){_WS}{_HIJACK_ROLE}",
            rf"developer{_WS}mode{_WS}(?:enabled|activated|engaged)\b",
            rf"(dan){_WS}mode\b",
            rf"jailbreak(?:en)?{_WS}mode\b",
            r"do anything now",
        ),
        validator=_role_hijack,
        description="Tries to switch the model into an unrestricted persona (DAN, developer mode).",
    ),
    Detector(
        rule="chat_template_token",
        category=Category.INJECTION,
        severity=Severity.MEDIUM,
        patterns=(
            # <|im_start|>, <|endoftext|>, <|eot_id|>…; <<SYS>>; Gemma turns; DeepSeek's full-width bars
            r"<(?:\|[a-z][a-z0-9_]{0,30}+\|>|</?sys>>|(?:start|end)_of_turn>|\uff5c[^\uff5c\n]{1,40}+\uff5c>)",
            r"\[/?(?:inst|system_prompt|available_tools|tool_calls|tool_results)\]",
            # Llama's end of sequence, only where it closes a turn (alone it is HTML strikethrough)
            rf"</s>{_NEXT_TURN}",
        ),
        description="Chat-template tokens (<|im_start|>, [INST], <<SYS>>, </s><s>, <start_of_turn>, …).",
    ),
    Detector(
        rule="chat_turn_marker",
        category=Category.INJECTION,
        severity=Severity.LOW,
        patterns=(
            r"\n\n(?:human|assistant):",
            r"\n[ \t]{0,4}+(?:#{1,4}[ \t]{0,2})?system"
            r"(?:[ \t](?:message|prompt|instructions?|override|note))?[ \t]{0,2}:",
        ),
        validator=_turn_marker,
        description="Fake turns: '\\n\\nHuman:', '\\n\\nAssistant:', a line 'System: …'.",
    ),
    Detector(
        rule="unicode_tag_characters",
        category=Category.INJECTION,
        severity=Severity.HIGH,
        patterns=(r"[\U000e0000-\U000e007f]{2,64}+",),
        validator=_not_a_flag,
        description="Invisible Unicode tag characters, used to smuggle instructions past a human reader.",
        gate=_may_contain_tag_characters,
    ),
    Detector(
        rule="zero_width_characters",
        category=Category.INJECTION,
        severity=Severity.MEDIUM,
        patterns=(
            # Two or more in a row: emoji sequences, Persian and Indic scripts use one at a time.
            f"{_ZERO_WIDTH}{{2,64}}+",
            # Inside a Latin word ("ig\u200bnore"): splits a keyword so that filters miss it.
            # The span runs over up to 16 such splits, so a long smuggled run is a few matches.
            f"{_ZERO_WIDTH}(?<=[a-z]{_ZERO_WIDTH}){_ZERO_WIDTH}{{0,7}}+"
            f"(?:[a-z]{{1,32}}+{_ZERO_WIDTH}{{1,8}}+){{0,15}}(?=[a-z])",
            # Variation selectors carry one byte each when chained; text uses one per character.
            f"{_VARIATION_SELECTOR}{{2,64}}+",
        ),
        description="Invisible characters in runs or inside words, and chained variation selectors.",
        gate=_not_ascii,
    ),
    Detector(
        rule="bidi_control_characters",
        category=Category.INJECTION,
        severity=Severity.MEDIUM,
        patterns=(_BIDI_OVERRIDE + "{1,64}+", _bidi_without_rtl_context()),
        description="Bidi overrides, and embeddings/isolates outside right-to-left text (Trojan Source).",
        gate=_not_ascii,
    ),
)
