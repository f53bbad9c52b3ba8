"""The request guard as a pre-flight stage: every text of a request is scanned, and each finding
is logged, redacted in what goes upstream, or blocks the request — as the caller's actions say."""

from __future__ import annotations

from gateway.stages.base import Decision, StageContext, Verdict
from gateway.stages.scan.actions import Action
from gateway.stages.scan.guard import FLAG_BYPASS, Findings, Guard, Hit, SensitiveValues, replace_spans
from gateway.stages.scan.output import ResponseGuard
from gateway.stages.scan.redact import (
    RedactionFailed,
    redact_structured,
    rewrite_body,
    value_at,
    with_values,
)

LOCATION_NAMES = {
    "system": "the system prompt",
    "user": "a user message",
    "assistant": "an assistant message",
    "tool_definition": "a tool definition",
    "tool_call": "a tool call",
    "tool_result": "a tool result",
    "output": "the model's output",
    "output_tool_call": "a tool call in the model's output",
}


def blocked_message(hit: Hit, location: str, what: str = "request") -> str:
    """A denial that names the rule and where it fired, never the matched text."""
    place = LOCATION_NAMES.get(location, location)
    return f"{what} blocked: {hit.rule} ({hit.category}) found in {place} (rule guards.{hit.rule})"


class GuardStage:
    """Scans system prompts, messages, tool definitions, calls and results; acts per finding."""

    name = "guards"

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def pre_flight(self, ctx: StageContext) -> Decision:
        guard, view = self.guard, ctx.view
        settings = guard.settings
        resolver = guard.resolver(ctx.policy)
        if resolver.bypass:
            ctx.flags.append(FLAG_BYPASS)
        findings = Findings()
        blocking: tuple[Hit, str] | None = None
        edits = []
        budget = settings.max_request_chars
        for target in view.scan_targets():
            text = target.text
            limit = min(settings.max_text_chars, budget)
            if len(text) > limit:
                findings.coverage(target.location)
                text = text[:limit]
            budget -= len(text)
            hits = guard.hits(text, target.location, resolver) if text else []
            if not hits:
                continue
            if ctx.sensitive is None:
                ctx.sensitive = SensitiveValues()
            ctx.sensitive.add_hits(text, hits)
            for hit in hits:
                findings.add_hit(hit, target.location)
                if hit.action is Action.BLOCK and blocking is None:
                    blocking = (hit, target.location)
            redact = [(h.start, h.end, h.rule) for h in hits if h.action is Action.REDACT]
            if redact and blocking is None:
                new_text = replace_spans(target.text, redact)
                try:
                    new = redact_structured(target.text, new_text) if target.structured else new_text
                except RedactionFailed:
                    # A guard that cannot do what it must denies: a security gateway fails closed.
                    hit = next(h for h in hits if h.action is Action.REDACT)
                    findings.add_hit(hit, target.location, Action.BLOCK)
                    blocking = (hit, target.location)
                    continue
                old = value_at(view.json, target.path)
                edits.append((target.path, old, new))
        found = findings.all()
        if blocking is not None:
            hit, location = blocking
            return Decision(
                Verdict.REJECT,
                findings=found,
                status=403,
                code="permission_denied",
                message=blocked_message(hit, location),
                rule=f"guards.{hit.rule}",
            )
        ctx.response_guard = ResponseGuard.for_caller(guard, ctx.policy, view, resolver)
        if not edits or view.json is None:
            return Decision.allow(found)
        body = rewrite_body(view.body, view.json, edits)
        view.json = with_values(view.json, [(path, new) for path, _, new in edits])
        return Decision(Verdict.MODIFY, findings=found, body=body)
