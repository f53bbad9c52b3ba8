"""Credential detectors: keys and tokens with a recognisable shape, and secrets assigned to names."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from urllib.parse import unquote

from gateway.stages.scan.detectors.base import (
    Category,
    Detector,
    Severity,
    Validator,
    char_classes,
    is_placeholder,
    plausible_password,
    prefixed_token,
    random_token,
    shannon_entropy,
)

# --- validators ------------------------------------------------------------------------------


def _aws_access_key_id(value: str) -> bool:
    return value.isupper() and "EXAMPLE" not in value and len(set(value[4:])) >= 6


def _jwt(value: str) -> bool:
    return value.startswith("eyJ") and ".eyJ" in value


def _slack_token(value: str) -> bool:
    if value.startswith("xapp-"):
        return random_token(value[5:])
    return value.startswith("xox") and re.search("[0-9]", value) is not None and random_token(value[5:])


def _base64_of(size: int) -> Validator:
    """The value is standard base64 of exactly `size` bytes (Azure keys, SAS signatures) and random."""

    def check(value: str) -> bool:
        value = unquote(value)  # SAS signatures travel URL-encoded (%2B, %2F, %3D)
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(decoded) == size and random_token(value)

    return check


def _azure_ad_client_secret(value: str) -> bool:
    # Entra ID client secrets: three characters, a digit, "Q~", then 31-34 more.
    return value[4:6] == "Q~" and random_token(value[6:])


_HEX = re.compile(r"[0-9a-fA-F-]+")
_ALPHABET = 62  # letters and digits: what random tokens mostly draw from


def _char_class(char: str) -> int:
    return 0 if char.islower() else 1 if char.isupper() else 2 if char.isdigit() else 3


def high_entropy_token(value: str) -> bool:
    """A long token that looks machine-made: upper, lower and digits, high entropy, no words.

    Tuned against what prompts are full of. Hex (git SHAs, hashes in URLs, UUIDs) never has
    all three character classes. The entropy bar is 90% of what a random token of that
    length over 62 symbols has on average (4.1 bits/char at 32 characters, 4.7 at 64): fewer
    than 1 in 100 random tokens fall below it. CamelCase identifiers (``AbstractProxyBean2``)
    can reach that entropy, but change character class at word boundaries only, where random
    tokens do at about 60% of positions: below 40% is a name. Base64 blobs (images) are
    longer than the pattern's 256 characters and never match as a whole.
    """
    token = value.rstrip("=")
    if _HEX.fullmatch(token) or char_classes(token) < 3 or is_placeholder(token):
        return False
    if token.count("/") > len(token) // 12:  # a path, not base64 (1 in 64 characters is "/")
        return False
    classes = [_char_class(c) for c in token]
    switches = sum(a != b for a, b in itertools.pairwise(classes))
    if switches < 0.4 * (len(token) - 1):
        return False
    expected = math.log2(_ALPHABET) - (_ALPHABET - 1) / (2 * len(token) * math.log(2))
    return shannon_entropy(token) >= 0.9 * expected


# --- pattern builders for families that share a shape ------------------------------------

_ASSIGN = r"""(?:\\?["'])?[ \t]{0,16}+(?::=|=>|[:=])[ \t]{0,16}+"""


def _assignment(key: str) -> str:
    """`key` followed by `=`, `:`, `:=` or `=>` and a quoted or bare value (the group)."""
    return key + _ASSIGN + r"""(?:\\?"([^"\\\n]{1,256}+)|\\?'([^'\\\n]{1,256}+)|([^\s"'`,;)\]}\\]{1,256}+))"""


def _secret_assignment(key: str) -> str:
    """`key` assigned a 40-character AWS-style secret."""
    return key + r"""(?:\\?["'])?[ \t]{0,16}+[:=][ \t]{0,16}+(?:\\?["'])?([a-z0-9/+]{40})(?![a-z0-9/+=])"""


def _connection_string_password(separator: str) -> str:
    """`Password=` / `Pwd=` after `separator` in a key=value connection string (ADO, ODBC, JDBC)."""
    return (
        re.escape(separator)
        + r"[ \t]{0,4}+(?:password|pwd)[ \t]{0,4}+=[ \t]{0,4}+"
        + r"""(?:\{([^}\n]{1,256}+)\}|"([^"\n]{1,256}+)"|'([^'\n]{1,256}+)'|([^;&\s"'{}]{1,256}+))"""
    )


def _token(prefix: str, alphabet: str, bounds: str, boundary: str) -> str:
    """`prefix` not preceded by a `boundary` character, then `alphabet`{`bounds`} possessively."""
    return rf"{prefix}(?<!{boundary}{prefix}){alphabet}{{{bounds}}}+"


# GitLab's documented token prefixes (personal, deploy, runner, trigger, OAuth, SCIM, feed,
# incoming mail, agent, CI job, feature-flag client).
_GITLAB_PREFIXES: tuple[str, ...] = (
    *("glpat-", "gldt-", "glrt-", "glptt-", "gloas-", "glsoat-", "glft-", "glimt-", "glagent-"),
    *("glcbt-", "glffct-"),
)
_GITHUB_PREFIXES = ("github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_")


CREDENTIAL_DETECTORS: tuple[Detector, ...] = (
    # --- keys with a recognisable prefix ------------------------------------------------------
    Detector(
        rule="anthropic_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(_token("sk-ant-", "[a-z0-9_-]", "32,256", "[a-z0-9_-]"),),
        validator=prefixed_token("sk-ant-"),
        description="Anthropic API or admin key (sk-ant-api03-…, sk-ant-admin01-…).",
    ),
    Detector(
        rule="openai_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"sk-(?<![a-z0-9_-]sk-)(?!ant-)[a-z0-9_-]{20,256}+",),
        validator=prefixed_token("sk-"),
        description="OpenAI-style secret key (sk-…, sk-proj-…, sk-svcacct-…; also OpenAI-compatible APIs).",
    ),
    Detector(
        rule="google_api_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"aiza(?<![a-z0-9_-]aiza)[a-z0-9_-]{35}(?![a-z0-9_-])",),
        validator=prefixed_token("AIza"),
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
        rule="azure_storage_account_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"accountkey[ \t]{0,4}+=[ \t]{0,4}+([a-z0-9+/]{86}==)(?![a-z0-9+/=])",),
        validator=_base64_of(64),
        description="Azure Storage / Cosmos DB AccountKey=<88 base64 characters> in a connection string.",
    ),
    Detector(
        rule="azure_shared_access_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"sharedaccesskey[ \t]{0,4}+=[ \t]{0,4}+([a-z0-9+/]{43}=)(?![a-z0-9+/=])",),
        validator=_base64_of(32),
        description="Azure Service Bus / Event Hubs / IoT Hub SharedAccessKey=<44 base64 characters>.",
    ),
    Detector(
        rule="azure_sas_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"sig=(?<![a-z0-9_-]sig=)([a-z0-9%+/]{43,132}+=?)(?![a-z0-9%+/=])",),
        validator=_base64_of(32),  # an HMAC-SHA256: 32 bytes, URL-encoded base64
        description="Azure shared access signature (sig=… of a SAS URL or SharedAccessSignature token).",
    ),
    Detector(
        rule="azure_ad_client_secret",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(
            r"[a-z0-9_~.](?<![a-z0-9_~.-][a-z0-9_~.])[a-z0-9_~.]{2}[0-9]q~[a-z0-9_~.-]{31,34}+(?![a-z0-9_~.-])",
        ),
        validator=_azure_ad_client_secret,
        description="Microsoft Entra ID (Azure AD) application client secret (xxx8Q~…).",
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
            _token("github_pat_", "[a-z0-9_]", "60,255", "[a-z0-9_]"),
        ),
        validator=prefixed_token(*_GITHUB_PREFIXES),
        description="GitHub personal, OAuth, app or fine-grained token.",
    ),
    Detector(
        rule="gitlab_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(
            *(_token(prefix, "[a-z0-9_-]", "20,255", "[a-z0-9_]") for prefix in _GITLAB_PREFIXES),
            _token("gr1348941", "[a-z0-9_-]", "20,255", "[a-z0-9_]"),  # runner registration
        ),
        validator=prefixed_token(*_GITLAB_PREFIXES, "GR1348941"),
        description="GitLab personal, deploy, runner, trigger, OAuth and other tokens (glpat-…, gldt-…, …).",
    ),
    Detector(
        rule="slack_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(
            r"xox[abeoprs]-(?<![a-z0-9]xox[abeoprs]-)[a-z0-9-]{10,255}+",
            _token("xapp-", "[a-z0-9-]", "20,255", "[a-z0-9]"),
        ),
        validator=_slack_token,
        description="Slack bot, user, app-level or refresh token.",
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
            _token(prefix, "[a-z0-9]", "16,255", "[a-z0-9]") for prefix in ("sk_live_", "rk_live_")
        ),
        validator=prefixed_token("sk_live_", "rk_live_"),
        description="Stripe live secret or restricted key (test-mode keys are not reported).",
    ),
    Detector(
        rule="huggingface_token",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"hf_(?<![a-z0-9_]hf_)[a-z0-9]{30,40}(?![a-z0-9_])",),
        validator=prefixed_token("hf_"),
        description="Hugging Face access token.",
    ),
    Detector(
        rule="gateway_key",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=(r"lgw_(?<![a-z0-9_]lgw_)[a-z0-9_-]{43}(?![a-z0-9_-])",),
        validator=prefixed_token("lgw_"),
        description="An llm-gateway key (lgw_ + 43 characters): whoever holds it calls as its owner.",
    ),
    Detector(
        rule="jwt",
        category=Category.CREDENTIAL,
        severity=Severity.MEDIUM,
        patterns=(r"eyj(?<![a-z0-9_-]eyj)[a-z0-9_-]{8,4096}+\.eyj[a-z0-9_-]{8,8192}+\.[a-z0-9_-]{0,4096}+",),
        validator=_jwt,
        description="JSON Web Token (header.payload.signature).",
    ),
    # --- secrets recognised by their context --------------------------------------------------
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
        rule="connection_string_password",
        category=Category.CREDENTIAL,
        severity=Severity.HIGH,
        patterns=tuple(_connection_string_password(separator) for separator in (";", "?", "&")),
        validator=plausible_password,
        description="Password=… / Pwd=… in an ADO.NET, ODBC or JDBC connection string ({braced} too).",
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
    Detector(
        rule="high_entropy_token",
        category=Category.CREDENTIAL,
        severity=Severity.LOW,
        patterns=(r"[a-z0-9+/_-](?<![a-z0-9+/=_-][a-z0-9+/_-])[a-z0-9+/_-]{31,255}+={0,2}(?![a-z0-9+/=_-])",),
        validator=high_entropy_token,
        description="Any 32-256 character token with mixed case, digits and high entropy (noisy: opt-in).",
        enabled_by_default=False,
    ),
)
