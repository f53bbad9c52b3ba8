"""The detector table: what the request scanner looks for, as data.

How to write a pattern (the table tests enforce the first three):

* Patterns are matched against the **lower-cased** text, so write them in lower case.
  The validator, if any, receives the **original** text of the value, so it can check case
  (an AWS key id is upper case, "DAN" is a jailbreak but "Dan" is a name).
* Every quantifier is bounded, and quantifiers nest only with small bounds, so the work per
  start position is bounded whatever the input. A run followed by a required token is
  possessive (``{8,4096}+``) so a failed match does not backtrack through the run.
* A pattern captures at most one value: the capture group that took part in the match, or
  else the whole match. Its span is what a match reports; a finding never carries it.
* Start with a literal, so ``re`` can jump between occurrences of it instead of trying every
  position. A left-boundary check therefore goes *after* the literal, as a look-behind that
  includes it: ``sk-(?<![a-z0-9_-]sk-)`` means "sk- not preceded by a token character".
  A rule may have several patterns for the same reason (one literal each).
"""

from __future__ import annotations

import re
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
    gate: Callable[[str], bool] | None = None  # cheap test of the whole lower-cased text; False skips


# --- validators: cut false positives; each receives the original text of the value ---------

# Values that stand for a secret rather than being one (matched lower-cased, anywhere).
_PLACEHOLDER = re.compile(
    r"your|example|sample|placeholder|change_?me|redacted|dummy|fake|todo|fixme|insert|replace"
    r"|xxxx|\*\*\*\*|\.\.\.\.|[<>]|\{\{|\}\}|\$\{"
)
_TRIVIAL_VALUES = frozenset({"123456", "1234567", "12345678", "123456789", "1234567890"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_.]*")  # letters, "_" and "." only: a name in code
_DIGIT = re.compile(r"[0-9]")


def _is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.search(value.lower()) is not None


def _char_classes(value: str) -> int:
    """How many of lower case, upper case and digits appear in `value`."""
    return (value != value.upper()) + (value != value.lower()) + (_DIGIT.search(value) is not None)


def random_token(value: str) -> bool:
    """A machine-made secret: mixes character classes, not repetitive, not a placeholder."""
    return len(set(value)) >= 8 and _char_classes(value) >= 2 and not _is_placeholder(value)


def plausible_password(value: str) -> bool:
    """An assigned value that is a literal secret, not a placeholder or a reference in code.

    Not secrets: shorter than 6 characters; placeholders (``<your password>``, ``changeme``,
    ``xxxx``); references (``$DB_PASS``, ``%(pw)s``, ``{{ vault }}``, ``os.environ[...]``,
    ``get_pw()``); paths and URLs; names made only of letters, ``_`` and ``.``
    (``password=password``, ``api_key=settings.api_key``); and low-variety values.
    """
    value = value.strip()
    if len(value) < 6 or _is_placeholder(value) or value in _TRIVIAL_VALUES:
        return False
    if value[0] in "$%{[(<`/~\\" or "(" in value or "[" in value or "://" in value:
        return False
    if _IDENTIFIER.fullmatch(value):
        return False
    return len(set(value)) >= 4


def _prefixed_token(prefix: str) -> Validator:
    """The original text starts with `prefix` exactly (case-sensitive) and the rest is random."""

    def check(value: str) -> bool:
        return value.startswith(prefix) and random_token(value[len(prefix) :])

    return check


def _aws_access_key_id(value: str) -> bool:
    return value.isupper() and "EXAMPLE" not in value and len(set(value[4:])) >= 6


def _jwt(value: str) -> bool:
    return value.startswith("eyJ") and ".eyJ" in value


_GITHUB_PREFIXES = ("github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_")


def _github_token(value: str) -> bool:
    prefix = next((p for p in _GITHUB_PREFIXES if value.startswith(p)), None)
    return prefix is not None and random_token(value[len(prefix) :])


def _slack_token(value: str) -> bool:
    return value.startswith("xox") and _DIGIT.search(value) is not None and random_token(value[5:])


def _stripe_key(value: str) -> bool:
    return value[:8] in ("sk_live_", "rk_live_") and random_token(value[8:])


def _role_hijack(value: str) -> bool:
    # "You are now DAN" is the jailbreak; "you are now Dan" is someone's name.
    return value.lower() != "dan" or value == "DAN"


def _turn_marker(value: str) -> bool:
    return value.lstrip("\r\n")[:1].isupper()


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


# --- pattern builders for families that share a shape ------------------------------------

_WS = r"\s{1,3}"
_APOSTROPHE = "['\u2019]"  # typewriter or typographic
_NEGATIONS = ("n't ", "n\u2019t ", "not ", "never ")


def _assignment(key: str) -> str:
    """`key` followed by `=`, `:`, `:=` or `=>` and a quoted or bare value (the group)."""
    return (
        key
        + r"""(?:\\?["'])?[ \t]{0,16}+(?::=|=>|[:=])[ \t]{0,16}+"""
        + r"""(?:\\?"([^"\\\n]{1,256}+)|\\?'([^'\\\n]{1,256}+)|([^\s"'`,;)\]}\\]{1,256}+))"""
    )


def _secret_assignment(key: str) -> str:
    """`key` assigned a 40-character AWS-style secret."""
    return key + r"""(?:\\?["'])?[ \t]{0,16}+[:=][ \t]{0,16}+(?:\\?["'])?([a-z0-9/+]{40})(?![a-z0-9/+=])"""


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


DETECTORS: tuple[Detector, ...] = (
    # --- credentials with a recognisable prefix ---------------------------------------------
    Detector(
        rule="anthropic_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"sk-ant-(?<![a-z0-9_-]sk-ant-)[a-z0-9_-]{32,256}+",),
        validator=_prefixed_token("sk-ant-"),
        description="Anthropic API or admin key (sk-ant-api03-…, sk-ant-admin01-…).",
    ),
    Detector(
        rule="openai_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"sk-(?<![a-z0-9_-]sk-)(?!ant-)[a-z0-9_-]{20,256}+",),
        validator=_prefixed_token("sk-"),
        description="OpenAI-style secret key (sk-…, sk-proj-…, sk-svcacct-…; also OpenAI-compatible APIs).",
    ),
    Detector(
        rule="google_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"aiza(?<![a-z0-9_-]aiza)[a-z0-9_-]{35}(?![a-z0-9_-])",),
        validator=_prefixed_token("AIza"),
        description="Google / Gemini API key (AIza + 35 characters).",
    ),
    Detector(
        rule="aws_access_key_id",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=tuple(
            rf"{prefix}(?<![a-z0-9]{prefix})[a-z0-9]{{16}}(?![a-z0-9])"
            for prefix in ("akia", "asia", "abia", "acca")
        ),
        validator=_aws_access_key_id,
        description="AWS access key id (AKIA… long-term, ASIA… temporary), except the documented EXAMPLE.",
    ),
    Detector(
        rule="aws_secret_access_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(
            _secret_assignment(r"secret[_.-]?access[_.-]?key"),
            _secret_assignment(r"aws[_.-]?secret[_.-]?key"),
        ),
        validator=random_token,
        description="AWS secret access key assigned to a recognisable name.",
    ),
    Detector(
        rule="private_key_block",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"-----begin [a-z0-9 ]{0,40}private key(?: block)?-----",),
        description="PEM, OpenSSH or PGP private key header.",
    ),
    Detector(
        rule="github_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(
            r"gh[pousr]_(?<![a-z0-9_]gh[pousr]_)[a-z0-9]{36,255}+",
            r"github_pat_(?<![a-z0-9_]github_pat_)[a-z0-9_]{60,255}+",
        ),
        validator=_github_token,
        description="GitHub personal, OAuth, app or fine-grained token.",
    ),
    Detector(
        rule="gitlab_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"glpat-(?<![a-z0-9_]glpat-)[a-z0-9_-]{20,255}+",),
        validator=_prefixed_token("glpat-"),
        description="GitLab personal access token.",
    ),
    Detector(
        rule="slack_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"xox[abeoprs]-(?<![a-z0-9]xox[abeoprs]-)[a-z0-9-]{10,255}+",),
        validator=_slack_token,
        description="Slack bot, user, app or refresh token.",
    ),
    Detector(
        rule="slack_webhook_url",
        category=Category.CREDENTIAL,
        severity=Severity.MEDIUM,
        patterns=(r"hooks\.slack\.com/services/t[a-z0-9]{6,16}/b[a-z0-9]{6,16}/[a-z0-9]{16,64}",),
        description="Slack incoming-webhook URL: whoever holds it can post.",
    ),
    Detector(
        rule="stripe_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=tuple(
            rf"{prefix}(?<![a-z0-9]{prefix})[a-z0-9]{{16,255}}+" for prefix in ("sk_live_", "rk_live_")
        ),
        validator=_stripe_key,
        description="Stripe live secret or restricted key (test-mode keys are not reported).",
    ),
    Detector(
        rule="huggingface_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"hf_(?<![a-z0-9_]hf_)[a-z0-9]{30,40}(?![a-z0-9_])",),
        validator=_prefixed_token("hf_"),
        description="Hugging Face access token.",
    ),
    Detector(
        rule="jwt",
        category=Category.CREDENTIAL,
        severity=Severity.MEDIUM,
        patterns=(r"eyj(?<![a-z0-9_-]eyj)[a-z0-9_-]{8,4096}+\.eyj[a-z0-9_-]{8,8192}+\.[a-z0-9_-]{0,4096}+",),
        validator=_jwt,
        description="JSON Web Token (header.payload.signature).",
    ),
    # --- credentials recognised by their context --------------------------------------------
    Detector(
        rule="bearer_token",
        category=Category.CREDENTIAL,
        severity=Severity.MEDIUM,
        patterns=(r"bearer[ \t]{1,4}+([a-z0-9._~+/-]{16,2048}+={0,3})",),
        validator=random_token,
        description="A literal token after 'Bearer' (an Authorization header pasted into a prompt).",
    ),
    Detector(
        rule="url_credentials",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"""://[^\s/:@"'<>]{0,128}+:([^\s/@"'<>]{1,128}+)@""",),
        validator=plausible_password,
        description="Password in a URL (postgres://user:pass@host, https://user:token@host).",
    ),
    Detector(
        rule="password_assignment",
        category=Category.CREDENTIAL,
        severity=Severity.MEDIUM,
        patterns=tuple(
            _assignment(key)
            for key in (
                r"passw(?:or)?d",
                r"passphrase",
                r"secret(?:[_.-]?key)?",
                r"private[_.-]?key",
                r"api[_.-]?(?:key|token|secret)",
                r"access[_.-]?token",
                r"auth[_.-]?token",
                r"refresh[_.-]?token",
            )
        ),
        validator=plausible_password,
        description="A password, secret, API key or token assigned a literal value (config, code, JSON).",
    ),
    # --- prompt-injection signatures --------------------------------------------------------
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
            r"\[/?inst\]",
        ),
        description="Special chat-template tokens (<|im_start|>, [INST], <<SYS>>, <start_of_turn>, …).",
    ),
    Detector(
        rule="chat_turn_marker",
        category=Category.INJECTION,
        severity=Severity.LOW,
        patterns=(r"\n\n(?:human|assistant):",),
        validator=_turn_marker,
        description="'\\n\\nHuman:' / '\\n\\nAssistant:' turn markers that fake a new conversation turn.",
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
)

# What an action table may name: any rule id or category.
SELECTORS: frozenset[str] = frozenset((*(d.rule for d in DETECTORS), *(c.value for c in Category)))
