"""Per-request state that flows through the stages, and its one audit record."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from gateway.audit.content import AuditContent, Redact
from gateway.audit.record import AuditRecord, Finding, Outcome
from gateway.errors import ErrorCode, GatewayError
from gateway.observe import RequestDigest
from gateway.providers.base import RequestView, ResponseSummary

if TYPE_CHECKING:
    from gateway.limits.limiter import Reservation
    from gateway.stages.scan.guard import SensitiveValues
    from gateway.stages.scan.output import ResponseGuard

FULL_CONTENT = AuditContent("full")

# How each gateway error ends up in the audit's outcome column.
OUTCOME_FOR_ERROR: dict[ErrorCode, Outcome] = {
    ErrorCode.INVALID_REQUEST: Outcome.BAD_REQUEST,
    ErrorCode.NOT_FOUND: Outcome.BAD_REQUEST,
    ErrorCode.REQUEST_TOO_LARGE: Outcome.BAD_REQUEST,
    ErrorCode.AUTHENTICATION: Outcome.REJECTED,
    ErrorCode.PERMISSION_DENIED: Outcome.REJECTED,
    ErrorCode.RATE_LIMITED: Outcome.REJECTED,
    ErrorCode.BUDGET_EXCEEDED: Outcome.REJECTED,
    ErrorCode.UNAVAILABLE: Outcome.REJECTED,
    ErrorCode.UPSTREAM_UNREACHABLE: Outcome.UPSTREAM_UNREACHABLE,
    ErrorCode.UPSTREAM_TIMEOUT: Outcome.TIMEOUT,
    ErrorCode.INTERNAL: Outcome.GATEWAY_ERROR,
}


@dataclass(slots=True)
class Exchange:
    """Everything learned about one request while it is in flight."""

    request_id: str
    method: str
    path: str
    provider: str = ""
    provider_kind: str = ""
    client_address: str = ""
    user_agent: str = ""
    key_id: str = ""
    user: str = ""
    team: str = ""
    trace_id: str = ""
    span_id: str = ""
    traceresponse: str = ""  # W3C `traceresponse` header value when tracing is on
    trace: object | None = None  # the telemetry's spans of this exchange
    route_label: str = ""  # low-cardinality route template for telemetry
    started: float = field(default_factory=time.perf_counter)
    ts: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    view: RequestView | None = None
    request_bytes: int = 0
    request_sha256: str = ""
    request_preview: str = ""
    findings: list[Finding] = field(default_factory=list)
    rejection_rule: str = ""
    status: int = 0
    outcome: Outcome = Outcome.OK
    error_type: str = ""
    error_message: str = ""
    upstream_started: float | None = None
    first_byte: float | None = None  # upstream response headers arrived
    first_chunk: float | None = None  # first body chunk arrived from the upstream
    upstream_wait: float = 0.0  # seconds spent waiting on the upstream (for the overhead metric)
    client_wait: float = 0.0  # seconds spent waiting on the client (body upload, slow reads)
    finished_at: float = 0.0
    streamed: bool = False
    relayed: RequestDigest = field(default_factory=RequestDigest)
    summary: ResponseSummary = field(default_factory=ResponseSummary)
    finished: bool = False
    cost: Decimal | None = None  # USD, once priced (gateway.runtime.Gateway.price)
    priced: bool = False
    flags: list[str] = field(default_factory=list)
    reservation: Reservation | None = None  # rate-limit and budget holds, settled at the finish
    response_guard: ResponseGuard | None = None  # watches the model's output (guards)
    sensitive: SensitiveValues | None = field(default=None, repr=False)  # matched secrets, in flight only
    # What copies of the content (the audit row, opt-in span content) may keep: set at the finish.
    keeps_content: bool = True
    redact_content: Redact | None = field(default=None, repr=False)

    def fail(self, err: GatewayError, error_type: str = "") -> None:
        """Record that the gateway answered with (or ended on) this error."""
        self.status = err.status
        self.outcome = OUTCOME_FOR_ERROR[err.code]
        self.error_type = error_type or str(err.code)
        self.error_message = err.message[:500]
        if err.rule:
            self.rejection_rule = err.rule

    def record(self, content: AuditContent = FULL_CONTENT, redact: Redact | None = None) -> AuditRecord:
        """The immutable audit row for this exchange, keeping what `content` allows of its content."""
        view = self.view
        s = self.summary
        now = self.finished_at or time.perf_counter()
        # The gateway's own error messages carry no content; the upstream's may echo it.
        error_message = self.error_message or content.text(s.error_message, 500, redact)
        return AuditRecord(
            ts=self.ts,
            request_id=self.request_id,
            trace_id=self.trace_id,
            span_id=self.span_id,
            provider=self.provider,
            provider_kind=self.provider_kind,
            method=self.method,
            endpoint=self.path,
            operation=view.endpoint.operation if view is not None else "",
            outcome=self.outcome,
            status=self.status,
            duration_ms=(now - self.started) * 1000.0,
            ttfb_ms=None if self.first_byte is None else (self.first_byte - self.started) * 1000.0,
            requested_model=view.model if view is not None else "",
            response_model=s.model,
            response_id=s.response_id,
            stream=view.stream if view is not None else False,
            error_type=self.error_type or s.error_type,
            error_message=error_message,
            request_bytes=self.request_bytes,
            response_bytes=self.relayed.size,
            request_sha256=self.request_sha256 if content.keeps_hashes else "",
            response_sha256=self.relayed.hexdigest() if content.keeps_hashes else "",
            usage=s.usage,
            finish_reason=s.finish_reason,
            request_preview=content.text(self.request_preview, content.request_chars, redact),
            response_preview=content.text(s.preview, content.response_chars, redact),
            findings=tuple(self.findings),
            rejection_rule=self.rejection_rule,
            key_id=self.key_id,
            user=self.user,
            team=self.team,
            client_address=self.client_address,
            user_agent=self.user_agent,
            cost_usd=self.cost,
            flags=tuple(self.flags),
        )
