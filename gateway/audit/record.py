"""The audit record: one immutable row per exchange, whatever its outcome."""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How an exchange ended; one value per audit row."""

    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    TIMEOUT = "timeout"
    CLIENT_DISCONNECTED = "client_disconnected"
    REJECTED = "rejected"
    BAD_REQUEST = "bad_request"
    GATEWAY_ERROR = "gateway_error"  # a fault in the gateway itself (a bug); never expected


@dataclass(frozen=True, slots=True)
class Finding:
    """A scanner finding: which rule fired where. Never carries the matched text."""

    rule: str
    category: str
    severity: str
    location: str
    action: str = "log"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, normalised across providers; None means not reported.

    input_tokens includes cache reads and writes; output_tokens includes reasoning
    (as the OpenTelemetry GenAI conventions define gen_ai.usage.*_tokens).
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Everything the gateway knows about one exchange. Provider keys never enter it."""

    ts: dt.datetime
    request_id: str
    provider: str
    provider_kind: str
    method: str
    endpoint: str
    operation: str
    outcome: Outcome
    status: int
    duration_ms: float
    trace_id: str = ""
    span_id: str = ""
    requested_model: str = ""
    response_model: str = ""
    response_id: str = ""
    stream: bool = False
    error_type: str = ""
    error_message: str = ""
    ttfb_ms: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    request_sha256: str = ""
    response_sha256: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = ""
    request_preview: str = ""
    response_preview: str = ""
    findings: tuple[Finding, ...] = ()
    rejection_rule: str = ""
    key_id: str = ""
    user: str = ""
    team: str = ""
    client_address: str = ""
    user_agent: str = ""
    cost_usd: Decimal | None = None  # None: the model's price (or the usage) is unknown — never 0
    flags: tuple[str, ...] = ()  # e.g. budget.warn:team-daily.daily_usd, limits.fail_open

    def to_wire(self) -> tuple[Any, ...]:
        """A tuple of plain values (inverse: `from_wire`): about 4 times cheaper to pickle than the record.

        How records cross to the audit store process (gateway/audit/process.py).
        """
        u = self.usage
        return (
            _plain_fields(self),
            self.outcome.value,
            (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens),
            tuple((f.rule, f.category, f.severity, f.location, f.action) for f in self.findings),
        )

    @classmethod
    def from_wire(cls, wire: tuple[Any, ...]) -> AuditRecord:
        plain, outcome, usage, findings = wire
        return cls(
            **dict(zip(_PLAIN_FIELDS, plain, strict=True)),
            outcome=Outcome(outcome),
            usage=Usage(*usage),
            findings=tuple(Finding(*f) for f in findings),
        )

    @staticmethod
    def row_from_wire(wire: tuple[Any, ...]) -> dict[str, Any]:
        """`from_wire(wire).to_row()` without building the record (the audit store process's hot path)."""
        plain, outcome, usage, findings = wire
        row = dict(zip(_PLAIN_FIELDS, plain, strict=True))
        row.update(zip(_USAGE_COLUMNS, usage, strict=True))
        columns = zip(*findings, strict=True) if findings else ((),) * len(_FINDING_COLUMNS)
        row.update(zip(_FINDING_COLUMNS, (list(c) for c in columns), strict=True))
        row["outcome"] = str(Outcome(outcome))
        return row

    def to_row(self) -> dict[str, Any]:
        """Flatten into the column names of the audit table."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        usage: Usage = row.pop("usage")
        row.update(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        findings: tuple[Finding, ...] = row.pop("findings")
        row["finding_rules"] = [f.rule for f in findings]
        row["finding_categories"] = [f.category for f in findings]
        row["finding_severities"] = [f.severity for f in findings]
        row["finding_locations"] = [f.location for f in findings]
        row["finding_actions"] = [f.action for f in findings]
        row["outcome"] = str(self.outcome)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditRecord:
        """Rebuild a record from a table row or a spooled row (inverse of to_row)."""
        row = dict(row)
        usage = Usage(
            **{
                k: row.pop(k, None)
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_tokens",
                    "cache_write_tokens",
                    "reasoning_tokens",
                )
            }
        )
        findings = tuple(
            Finding(rule=r, category=c, severity=s, location=loc, action=a)
            for r, c, s, loc, a in zip(
                row.pop("finding_rules", []),
                row.pop("finding_categories", []),
                row.pop("finding_severities", []),
                row.pop("finding_locations", []),
                row.pop("finding_actions", []),
                strict=True,
            )
        )
        ts = row.pop("ts")
        if isinstance(ts, str):
            ts = dt.datetime.fromisoformat(ts)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in row.items() if k in names}
        kwargs["outcome"] = Outcome(kwargs["outcome"])
        kwargs["flags"] = tuple(kwargs.get("flags") or ())
        if kwargs.get("cost_usd") is not None:
            kwargs["cost_usd"] = Decimal(str(kwargs["cost_usd"]))
        return cls(ts=ts, usage=usage, findings=findings, **kwargs)


_PLAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(AuditRecord) if f.name not in ("outcome", "usage", "findings")
)
_plain_fields = operator.attrgetter(*_PLAIN_FIELDS)
_USAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(Usage))
_FINDING_COLUMNS = (
    "finding_rules",
    "finding_categories",
    "finding_severities",
    "finding_locations",
    "finding_actions",
)
