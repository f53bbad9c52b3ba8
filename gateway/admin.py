"""Health probes and the local audit endpoint the CLI uses while the gateway owns the store."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit import queries
from gateway.runtime import GATEWAY

INTERNAL_TOKEN = web.AppKey("internal_token", str)
RUNTIME_FILE = "gateway.runtime.json"


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus pull: text format, or OpenMetrics (with exemplars) when the scraper asks for it."""
    page = request.app[GATEWAY].telemetry.metrics_page(request.headers.get("Accept", ""))
    if page is None:
        raise web.HTTPNotFound(text="metrics are disabled (telemetry.metrics / telemetry.prometheus)")
    body, content_type = page
    return web.Response(body=body, headers={"Content-Type": content_type})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the audit writer has its store (or spool) and the upstream sessions are open."""
    gw = request.app[GATEWAY]
    body = {"ready": gw.ready, "audit": asdict(gw.writer.stats), "providers": sorted(gw.routes)}
    return web.json_response(
        body, status=200 if gw.ready else 503, dumps=lambda o: json.dumps(o, default=str)
    )


def add_internal_routes(app: web.Application) -> None:
    app[INTERNAL_TOKEN] = secrets.token_urlsafe(32)
    app.router.add_get("/_gateway/audit/tail", audit_tail)
    app.router.add_get("/_gateway/audit/show/{request_id}", audit_show)
    app.router.add_get("/_gateway/spend", local_spend)


def _authorized(request: web.Request) -> None:
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not hmac.compare_digest(presented.encode(), request.app[INTERNAL_TOKEN].encode()):
        raise web.HTTPUnauthorized(text='{"error": "unauthorized"}', content_type="application/json")


async def audit_tail(request: web.Request) -> web.Response:
    _authorized(request)
    try:
        limit = max(1, min(int(request.query.get("limit", "20")), 1000))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    gw = request.app[GATEWAY]
    query = queries.tail_query(gw.config.audit, limit)
    found = queries.records(await gw.writer.query(query.sql, query.parameters))[::-1]
    return web.json_response([r.to_row() for r in found], dumps=lambda o: json.dumps(o, default=str))


async def audit_show(request: web.Request) -> web.Response:
    _authorized(request)
    gw = request.app[GATEWAY]
    query = queries.show_query(gw.config.audit, request.match_info["request_id"])
    found = queries.records(await gw.writer.query(query.sql, query.parameters))
    if not found:
        raise web.HTTPNotFound(text='{"error": "no such request id"}', content_type="application/json")
    return web.json_response(found[0].to_row(), dumps=lambda o: json.dumps(o, default=str))


async def local_spend(request: web.Request) -> web.Response:
    """`llm-gateway spend` on this machine (runtime-file token); same report as GET /admin/spend."""
    _authorized(request)
    from gateway.admin_api import spend

    return await spend(request)


def write_runtime_file(directory: Path, url: str, token: str) -> Path:
    """Tell local CLI commands where the running gateway is (0600: the token is a secret)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUNTIME_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, fh)
    return path


def read_runtime_file(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
