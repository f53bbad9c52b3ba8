"""The pipeline-stage protocol: every guard, policy and limit is one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.audit.record import Finding
    from gateway.auth.policy import PolicyChain
    from gateway.limits.limiter import Reservation
    from gateway.providers.base import RequestView
    from gateway.stages.scan.guard import SensitiveValues
    from gateway.stages.scan.output import ResponseGuard


class Verdict(StrEnum):
    ALLOW = "allow"
    MODIFY = "modify"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a stage decided about a request.

    `findings` are recorded whatever the verdict. For MODIFY, `body` replaces the
    request body forwarded upstream. For REJECT, `status`/`code`/`message` become a
    provider-shaped error and `rule` names what fired (audited as rejection_rule).
    """

    verdict: Verdict = Verdict.ALLOW
    findings: tuple[Finding, ...] = ()
    body: bytes | None = None
    status: int = 403
    code: str = "permission_denied"
    message: str = ""
    rule: str = ""

    @classmethod
    def allow(cls, findings: tuple[Finding, ...] = ()) -> Decision:
        return cls(Verdict.ALLOW, findings=findings) if findings else ALLOW


ALLOW = Decision()


@dataclass(slots=True)
class StageContext:
    """What a stage may look at: the parsed request and who is calling."""

    view: RequestView
    client_address: str = ""
    key_id: str = ""
    user: str = ""
    team: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    provider: str = ""  # the configured provider's name (the route), e.g. "openai" or "vllm"
    policy: PolicyChain | None = None  # key → user → team → global policies; None: no policy applies
    request_id: str = ""
    reservation: Reservation | None = None  # set by the limits stage; settled when the exchange ends
    response_guard: ResponseGuard | None = None  # set by the guard stage: what watches the output
    flags: list[str] = field(default_factory=list)  # audit flags raised by stages
    # Matched credential/PII values, so the audit's copies of the content can be redacted
    # (None until a stage matches one).
    sensitive: SensitiveValues | None = field(default=None, repr=False)


@runtime_checkable
class Stage(Protocol):
    """A pre-flight stage: one name, one method. Raising counts as a denial."""

    name: str

    async def pre_flight(self, ctx: StageContext) -> Decision: ...
