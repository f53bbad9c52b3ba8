"""Personal data detectors: email, phone, payment card, US SSN, IBAN and IP addresses.

Each pattern finds the candidate shape; the validator applies the checksum or numbering
rules (Luhn, mod-97, SSA ranges) and drops the documented example values.
"""

from __future__ import annotations

import ipaddress
import re

from gateway.stages.scan.detectors.base import Category, Detector, Severity, is_placeholder

# --- email -------------------------------------------------------------------------------------

# RFC 2606 / 6761 names reserved for documentation and tests.
_RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example(?:\.com|\.net|\.org)?|test|invalid|localhost)$")
_RETINA_ASSET = re.compile(r"[0-9]+x\.")  # icon@2x.png is a file name, not an address


def _email(value: str) -> bool:
    local, _, domain = value.lower().rpartition("@")
    if _RESERVED_DOMAIN.search(domain) or _RETINA_ASSET.match(domain):
        return False
    return local != "git" and not is_placeholder(local)  # git@github.com is an SSH remote


# --- phone numbers -------------------------------------------------------------------------------

_NOT_DIGIT = re.compile(r"[^0-9]")
# 555-0100..555-0199 are reserved for fiction in the North American plan.
_FICTIONAL_NANP = re.compile(r"[0-9]*55501[0-9]{2}$")


def _phone_number(value: str) -> bool:
    digits = _NOT_DIGIT.sub("", value)
    if len(set(digits)) < 3 or _FICTIONAL_NANP.match(digits):
        return False
    if value.count("(") != value.count(")"):
        return False
    separators = {c for c in value if c in " .-"}
    if len(separators) > 1 and "(" not in value:  # 415.555-2671 reads like two numbers
        return False
    if value.startswith("+"):
        return 8 <= len(digits) <= 15  # E.164: at most 15 digits with the country code
    return 10 <= len(digits) <= 12


# --- payment cards -----------------------------------------------------------------------------

# (first digits low, high, lengths): the major networks' issuer identification numbers.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (300, 305, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (62, 62, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, frozenset(range(16, 20))),  # Mir
)
# Published test numbers (card networks', Stripe's and Braintree's documentation).
_TEST_CARDS = frozenset(
    {
        "4111111111111111", "4242424242424242", "4000056655665556", "4012888888881881",
        "4222222222222", "5555555555554444", "5105105105105100", "5200828282828210",
        "2223003122003222", "378282246310005", "371449635398431", "378734493671000",
        "6011111111111117", "6011000990139424", "3056930009020004", "36227206271667",
        "30569309025904", "38520000023237", "3566002020360505", "3530111333300000",
        "6200000000000005",
    }
)  # fmt: skip


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check digit of a card number is right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _issuer_length_ok(digits: str) -> bool:
    for low, high, lengths in _CARD_RANGES:
        width = len(str(low))
        if low <= int(digits[:width]) <= high:
            return len(digits) in lengths
    return False


def _grouping_ok(value: str) -> bool:
    """No separators, or one kind of separator in the printed groupings (4-4-4-4…, 4-6-5, 4-6-4)."""
    separators = {c for c in value if not c.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = [len(g) for g in value.split(separators.pop())]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4


def _payment_card(value: str) -> bool:
    digits = _NOT_DIGIT.sub("", value)
    if digits in _TEST_CARDS or len(set(digits)) < 4:
        return False
    return _grouping_ok(value) and _issuer_length_ok(digits) and luhn_valid(digits)


# --- US social security numbers ---------------------------------------------------------------

# Numbers the SSA voided or that were published as examples (Woolworth's wallet card, ads).
_EXAMPLE_SSNS = frozenset({"078-05-1120", "219-09-9999", "123-45-6789"})


def _us_ssn(value: str) -> bool:
    area, group, serial = value[:3], value[4:6], value[7:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return value not in _EXAMPLE_SSNS


# --- IBAN ---------------------------------------------------------------------------------------

# ISO 13616 registry (SWIFT): country code -> IBAN length.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# The examples of ISO 13616 and of most IBAN documentation.
_EXAMPLE_IBANS = frozenset({"GB82WEST12345698765432", "DE89370400440532013000"})


def _iban_pattern() -> str:
    """Two letters and two digits, then, per IBAN length, a look-behind for the countries of
    that length and exactly as many characters in groups of four (spaces optional): a word
    after the IBAN is never taken in."""
    by_length: dict[int, list[str]] = {}
    for country, length in sorted(IBAN_LENGTHS.items()):
        by_length.setdefault(length, []).append(country.lower())
    alternatives = []
    for length, countries in sorted(by_length.items()):
        full, rest = divmod(length - 4, 4)
        tail = f"[ ]?[a-z0-9]{{{rest}}}" if rest else ""
        alternatives.append(f"(?<=(?:{'|'.join(countries)})[0-9]{{2}})(?:[ ]?[a-z0-9]{{4}}){{{full}}}{tail}")
    return f"[a-z](?<![a-z0-9][a-z])[a-z][0-9]{{2}}(?:{'|'.join(alternatives)})(?![a-z0-9])"


def iban_valid(value: str) -> bool:
    """Country code upper case, the registered length, and the ISO 7064 mod-97 check."""
    compact = value.replace(" ", "")
    spaces = value.count(" ")
    if not value[:2].isupper() or spaces not in (0, (len(compact) - 1) // 4):
        return False
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or compact in _EXAMPLE_IBANS:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# --- IP addresses ----------------------------------------------------------------------------------

_DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _ip_kind(value: str) -> str | None:
    """'public', 'internal' (private, loopback, link-local) or None (not an address, or reserved)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.version == 6 and (value.count(":") < 2 or not re.search("[0-9]", value)):
        return None  # "dead::beef" and friends are more often words than addresses
    if any(address in net for net in _DOCUMENTATION_NETWORKS if net.version == address.version):
        return None
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return None
    if address.is_loopback or address.is_link_local or address.is_private:
        return "internal"
    return "public" if address.is_global else None


def _public_ip(value: str) -> bool:
    return _ip_kind(value) == "public"


def _internal_ip(value: str) -> bool:
    return _ip_kind(value) == "internal"


_IPV4 = r"[0-9](?<![0-9a-z_.-][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9a-z_]|\.[0-9])"
# At least two colons early on ("::1", "fe80::1", "2001:db8:…"), so that "else:" is no candidate.
_IPV6 = (
    r"[0-9a-f:](?<![0-9a-z_:.-][0-9a-f:])[0-9a-f]{0,4}:[0-9a-f]{0,4}:[0-9a-f:]{0,36}+"
    r"(?![0-9a-z_:-]|\.[0-9a-z])"
)


PII_DETECTORS: tuple[Detector, ...] = (
    Detector(
        rule="email_address",
        category=Category.PII,
        severity=Severity.LOW,
        patterns=(
            r"[a-z0-9._%+-](?<![a-z0-9._%+-][a-z0-9._%+-])[a-z0-9._%+-]{0,63}+"
            r"@[a-z0-9-]{1,63}+\.(?:[a-z0-9-]{1,63}+\.){0,8}[a-z]{2,24}(?![a-z0-9-])",
        ),
        validator=_email,
        description="Email address (documentation domains such as example.com are not reported).",
    ),
    Detector(
        rule="phone_number",
        category=Category.PII,
        severity=Severity.LOW,
        patterns=(
            # E.164 / international: +44 20 7946 0958, +1 (415) 555-2671, +4930123456
            r"\+(?<![a-z0-9+]\+)[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,6}(?![0-9])",
            # North American: (415) 555-2671, 415-555-2671, 415.555.2671
            r"\((?<![0-9a-z_+.(-]\()[2-9][0-9]{2}\)[ ]?[2-9][0-9]{2}[ .-][0-9]{4}(?![0-9a-z_]|[.-][0-9])",
            r"[2-9](?<![0-9a-z_+.(-][2-9])[0-9]{2}[ .-][2-9][0-9]{2}[ .-][0-9]{4}(?![0-9a-z_]|[.-][0-9])",
            # National with a trunk 0: 020 7946 0958, 030 1234 5678, 01 23 45 67 89
            r"0(?<![0-9a-z_+.-]0)(?:[1-9][0-9]{1,4}[ -][0-9]{3,4}[ -]?[0-9]{3,4}|[1-9](?:[ .][0-9]{2}){4})"
            r"(?![0-9a-z_]|[.-][0-9])",
        ),
        validator=_phone_number,
        description="Phone number: international (+…, E.164), North American, or national with a leading 0.",
    ),
    Detector(
        rule="payment_card_number",
        category=Category.PII,
        severity=Severity.HIGH,
        patterns=(r"[2-6](?<![0-9a-z_.-][2-6])(?:[ -]?[0-9]){12,18}(?![0-9])",),
        validator=_payment_card,
        description="Payment card number: known issuer prefix and length, Luhn-checked; test cards excluded.",
    ),
    Detector(
        rule="us_ssn",
        category=Category.PII,
        severity=Severity.HIGH,
        patterns=(r"[0-8](?<![0-9a-z_.-][0-8])[0-9]{2}-[0-9]{2}-[0-9]{4}(?![0-9a-z_]|-[0-9])",),
        validator=_us_ssn,
        description="US social security number (123-45-6789 form) within the SSA's valid ranges.",
    ),
    Detector(
        rule="iban",
        category=Category.PII,
        severity=Severity.MEDIUM,
        patterns=(_iban_pattern(),),
        validator=iban_valid,
        description="International bank account number with the registered length and a valid mod-97 check.",
    ),
    Detector(
        rule="ip_address",
        category=Category.PII,
        severity=Severity.LOW,
        patterns=(_IPV4, _IPV6),
        validator=_public_ip,
        description="Public IPv4 / IPv6 address (private, loopback and documentation ranges are not).",
    ),
    Detector(
        rule="ip_address_internal",
        category=Category.PII,
        severity=Severity.LOW,
        patterns=(_IPV4, _IPV6),
        validator=_internal_ip,
        description="Private, loopback or link-local address: network layout, not personal data (opt-in).",
        enabled_by_default=False,
    ),
)
