"""The one gateway error type; each provider adapter renders it in its wire format."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.audit.record import Finding


class ErrorCode(StrEnum):
    """Provider-neutral error codes, mapped to each provider's own vocabulary."""

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


STATUS_FOR_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.AUTHENTICATION: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UPSTREAM_UNREACHABLE: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}


class GatewayError(Exception):
    """An error the gateway itself answers with, before or instead of the upstream."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        status: int = 0,
        rule: str = "",
        findings: tuple[Finding, ...] = (),
        headers: Mapping[str, str] | None = None,
        rate_limit: tuple[str, int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE[code]
        self.rule = rule  # which rule denied the request, for rejections
        self.findings = findings  # scanner findings gathered before the rejection
        self.headers = dict(headers or {})  # e.g. retry-after on a 429
        # (metric, limit, reset seconds) of the rate limit that fired: adapters add their own
        # rate-limit headers (x-ratelimit-*, anthropic-ratelimit-*) from it
        self.rate_limit = rate_limit

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"
