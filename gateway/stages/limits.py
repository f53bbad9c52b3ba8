"""Rate limits and budgets as the last pre-flight stage: only requests about to go upstream reserve."""

from __future__ import annotations

from gateway.limits.limiter import Caller, Limiter
from gateway.stages.base import ALLOW, Decision, StageContext


class LimitStage:
    name = "limits"

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def pre_flight(self, ctx: StageContext) -> Decision:
        """Reserve on every matching counter, or raise the provider-shaped 429 / 503."""
        view = ctx.view
        caller = Caller(ctx.request_id, ctx.provider, view.adapter.kind, ctx.key_id, ctx.user, ctx.team)
        ctx.reservation = await self.limiter.reserve(caller, view)
        return ALLOW
