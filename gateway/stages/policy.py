"""The policy stage: may this caller use this provider, model, endpoint, streaming and token budget?

The rules and how key, user, team and global policies combine are in gateway/auth/policy.py;
this stage applies them to one request and either allows it, denies it with the rule that
fired, or clamps its output-token cap.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.auth.policy import Denial
from gateway.stages.base import ALLOW, Decision, StageContext, Verdict


class PolicyStage:
    name = "policy"

    async def pre_flight(self, ctx: StageContext) -> Decision:
        chain = ctx.policy
        if chain is None:
            return ALLOW
        view = ctx.view
        endpoint = view.endpoint
        denial = chain.check_access(
            ctx.provider, view.model, endpoint.operation, ctx.client_address, endpoint.gen_ai_operation
        )
        if denial is None and view.stream:
            denial = chain.allows_streaming()
        if denial is not None:
            return deny(denial)
        cap = chain.output_cap()
        if cap is None or view.json is None:
            return ALLOW
        paths = view.adapter.output_limit_fields(view.endpoint.operation)
        if not paths:
            return ALLOW
        path = next((p for p in paths if _get(view.json, p) is not None), paths[0])
        requested = _get(view.json, path)
        if isinstance(requested, int) and not isinstance(requested, bool) and requested <= cap.limit:
            return ALLOW
        if requested is not None and cap.action == "reject":
            field = ".".join(path)
            return deny(Denial(cap.rule, f"{field}={requested} is over the limit of {cap.limit}"))
        # Over the cap with clamp, or no cap requested at all: the request goes up with the limit.
        capped = _with(view.json, path, cap.limit)
        view.json = capped
        view.params["max_tokens"] = cap.limit
        return Decision(Verdict.MODIFY, body=orjson.dumps(capped))


def deny(denial: Denial) -> Decision:
    return Decision(
        Verdict.REJECT,
        status=403,
        code="permission_denied",
        message=f"request denied by policy: {denial.message} (rule {denial.rule})",
        rule=denial.rule,
    )


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for name in path:
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node


def _with(data: dict[str, Any], path: tuple[str, ...], value: int) -> dict[str, Any]:
    """A copy of `data` with `path` set to `value` (the dicts along the path copied, nothing else)."""
    top = dict(data)
    node = top
    for name in path[:-1]:
        child = node.get(name)
        node[name] = dict(child) if isinstance(child, dict) else {}
        node = node[name]
    node[path[-1]] = value
    return top
