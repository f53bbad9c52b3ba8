"""The detector table: what the request scanner looks for, as data.

One module per category (credentials, injection, pii), each a tuple of `Detector` rows with
the validators beside them; `base` says what a detector is and how to write a pattern.
Rule ids are stable: audit rows and dashboards refer to them.
"""

from __future__ import annotations

from gateway.stages.scan.detectors.base import (
    Category,
    Detector,
    Severity,
    Validator,
    plausible_password,
    random_token,
)
from gateway.stages.scan.detectors.credentials import CREDENTIAL_DETECTORS
from gateway.stages.scan.detectors.injection import INJECTION_DETECTORS
from gateway.stages.scan.detectors.pii import PII_DETECTORS

ALL_DETECTORS: tuple[Detector, ...] = CREDENTIAL_DETECTORS + INJECTION_DETECTORS + PII_DETECTORS
"""Every rule, including the opt-in ones (`enabled_by_default=False`)."""

DETECTORS: tuple[Detector, ...] = tuple(d for d in ALL_DETECTORS if d.enabled_by_default)
"""The rules that run unless configuration says otherwise."""

SELECTORS: frozenset[str] = frozenset((*(d.rule for d in ALL_DETECTORS), *(c.value for c in Category)))
"""What an action table may name: any rule id or category."""

__all__ = [
    "ALL_DETECTORS",
    "DETECTORS",
    "SELECTORS",
    "Category",
    "Detector",
    "Severity",
    "Validator",
    "plausible_password",
    "random_token",
]
