"""The admin API under /admin/: gateway keys, teams and users (JSON, bearer admin token).

Off (404) unless an admin token is configured. The token is compared by hash in constant time.
Responses that carry a new secret are marked `Cache-Control: no-store`; the secret is shown in
that one response and never again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.audit.writer import AuditUnavailable
from gateway.auth.keys import GatewayKey, hash_secret, policy_to_dict, same_hash
from gateway.auth.registry import IssuedKey, KeyRegistry, KeyRequestError
from gateway.auth.settings import Team, User
from gateway.runtime import GATEWAY
from gateway.spend import SpendRequestError, report_body, spend_sql

log = logging.getLogger("gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.Response]]
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_routes(app: web.Application) -> None:
    for method, path, handler in (
        ("GET", "/admin/keys", list_keys),
        ("POST", "/admin/keys", create_key),
        ("GET", "/admin/keys/{key_id}", show_key),
        ("DELETE", "/admin/keys/{key_id}", revoke_key),
        ("POST", "/admin/keys/{key_id}/revoke", revoke_key),
        ("POST", "/admin/keys/{key_id}/rotate", rotate_key),
        ("GET", "/admin/teams", list_teams),
        ("GET", "/admin/users", list_users),
        ("GET", "/admin/spend", spend),
    ):
        app.router.add_route(method, path, admin_only(handler))
    app.router.add_route("*", "/admin", admin_only(not_found))
    app.router.add_route("*", "/admin/{tail:.*}", admin_only(not_found))


def admin_only(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.Response:
        expected = request.app[GATEWAY].access.admin_hash
        if not expected:
            return error(404, "the admin API is disabled: configure auth.admin_token to enable it")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not same_hash(hash_secret(token.strip()), expected):
            log.warning(
                "admin API: refused %s %s from %s (bad token)", request.method, request.path, request.remote
            )
            response = error(401, "missing or wrong admin token (Authorization: Bearer <admin token>)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="llm-gateway admin"'
            return response
        try:
            return await handler(request)
        except KeyRequestError as exc:
            return error(exc.status, str(exc))

    return guarded


def registry_of(request: web.Request) -> KeyRegistry:
    return request.app[GATEWAY].access.registry


async def list_keys(request: web.Request) -> web.Response:
    include_revoked = request.query.get("include_revoked", "true").lower() not in ("0", "false", "no")
    keys = registry_of(request).list(team=request.query.get("team", ""), include_revoked=include_revoked)
    return reply({"keys": [k.public() for k in keys]})


async def show_key(request: web.Request) -> web.Response:
    return reply({"key": registry_of(request).get(request.match_info["key_id"]).public()})


async def create_key(request: web.Request) -> web.Response:
    spec = await json_body(request)
    if "expires_in" in spec:
        spec["expires_at"] = (dt.datetime.now(dt.UTC) + parse_duration(spec.pop("expires_in"))).isoformat()
    issued = await registry_of(request).create(spec)
    return reply(issued_body(issued), status=201, secret=True)


async def rotate_key(request: web.Request) -> web.Response:
    spec = await json_body(request, optional=True)
    grace = parse_duration(spec.get("grace", "0s"))
    issued = await registry_of(request).rotate(request.match_info["key_id"], grace)
    return reply(issued_body(issued), secret=True)


async def revoke_key(request: web.Request) -> web.Response:
    key = await registry_of(request).revoke(request.match_info["key_id"])
    return reply({"key": key.public()})


async def list_teams(request: web.Request) -> web.Response:
    registry = registry_of(request)
    return reply({"teams": [team_view(t, registry.list(team=t.name)) for t in registry.teams.values()]})


async def list_users(request: web.Request) -> web.Response:
    return reply({"users": [user_view(u) for u in registry_of(request).users.values()]})


async def spend(request: web.Request) -> web.Response:
    """Spend per team, user, key, model or provider: ?by=team&since=7d[&team=…&model=…]."""
    gw = request.app[GATEWAY]
    by, since = request.query.get("by", "team"), request.query.get("since", "7d")
    filters = {k: v for k, v in request.query.items() if k not in ("by", "since")}
    try:
        sql, parameters = spend_sql(gw.config.audit, by, since, filters)
    except SpendRequestError as exc:
        return error(400, str(exc))
    try:
        rows = await gw.writer.query(sql, parameters)
    except AuditUnavailable as exc:
        return error(503, f"the audit store is unavailable: {exc}")
    return reply(report_body(by, since, rows))


async def not_found(request: web.Request) -> web.Response:
    return error(404, f"no admin endpoint {request.method} {request.path}")


def issued_body(issued: IssuedKey) -> dict[str, Any]:
    return {
        "key": issued.key.public(),
        "secret": issued.secret,
        "note": "the secret is shown only now; store it (e.g. as the agent's API key variable)",
    }


def team_view(team: Team, keys: list[GatewayKey]) -> dict[str, Any]:
    active = [k for k in keys if k.revoked_at is None]
    return {
        "name": team.name,
        "description": team.description,
        "policy": policy_to_dict(team.policy),
        "keys": len(active),
    }


def user_view(user: User) -> dict[str, Any]:
    return {"name": user.name, "team": user.team, "email": user.email, "policy": policy_to_dict(user.policy)}


def parse_duration(value: Any) -> dt.timedelta:
    """`90s`, `15m`, `24h`, `7d`, `2w` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return dt.timedelta(seconds=value)
    m = _DURATION.match(str(value).strip())
    if m is None:
        raise KeyRequestError(f"not a duration: {value!r} (use e.g. 90s, 15m, 24h, 7d)")
    return dt.timedelta(seconds=int(m.group(1)) * _SECONDS[m.group(2)])


async def json_body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw and optional:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise KeyRequestError("the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise KeyRequestError("the request body must be a JSON object")
    return data


def reply(body: dict[str, Any], status: int = 200, secret: bool = False) -> web.Response:
    response = web.json_response(body, status=status)
    if secret:
        response.headers["Cache-Control"] = "no-store"
    return response


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)
