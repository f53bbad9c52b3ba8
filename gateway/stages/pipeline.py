"""Runs the configured pre-flight stages in order; the first rejection wins."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.audit.record import Finding
from gateway.errors import ErrorCode, GatewayError
from gateway.stages.base import Stage, StageContext, Verdict

log = logging.getLogger("gateway.stages")


@dataclass(frozen=True, slots=True)
class PipelineResult:
    findings: tuple[Finding, ...]
    body: bytes | None  # the body after every MODIFY, or None when unchanged


class Pipeline:
    """An ordered list of stages. A stage that raises denies: a security gateway fails closed."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)

    async def pre_flight(self, ctx: StageContext) -> PipelineResult:
        findings: list[Finding] = []
        body: bytes | None = None
        for stage in self.stages:
            try:
                decision = await stage.pre_flight(ctx)
            except GatewayError as answer:  # a stage's own provider-shaped answer (e.g. a 429)
                if findings:
                    answer.findings = (*findings, *answer.findings)
                raise
            except Exception as exc:
                log.exception("stage %s failed; denying the request", stage.name)
                raise GatewayError(
                    ErrorCode.PERMISSION_DENIED,
                    f"request denied: the {stage.name} check failed ({type(exc).__name__})",
                    rule=f"{stage.name}.error",
                ) from exc
            findings.extend(decision.findings)
            if decision.verdict is Verdict.REJECT:
                err = GatewayError(
                    ErrorCode(decision.code)
                    if decision.code in ErrorCode._value2member_map_
                    else ErrorCode.PERMISSION_DENIED,
                    decision.message or f"request denied by {stage.name}",
                    status=decision.status,
                    rule=decision.rule or stage.name,
                    findings=tuple(findings),
                )
                raise err
            if decision.verdict is Verdict.MODIFY and decision.body is not None:
                body = ctx.view.body = decision.body  # later stages see what will be sent
        return PipelineResult(tuple(findings), body)
