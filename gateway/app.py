"""The app factory: routes, startup and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import admin, admin_api
from gateway.audit.queries import spend_since_query
from gateway.audit.writer import AuditUnavailable, AuditWriter
from gateway.auth.access import Access
from gateway.auth.registry import KeyRegistry
from gateway.auth.store import open_key_store
from gateway.config import GatewayConfig
from gateway.limits.counters import MemoryCounters, StateUnavailable, open_counters
from gateway.limits.limiter import Limiter
from gateway.pricing.table import load_table
from gateway.proxy import handle
from gateway.runtime import GATEWAY, Gateway
from gateway.stages.base import Stage
from gateway.stages.limits import LimitStage
from gateway.stages.pipeline import Pipeline
from gateway.stages.policy import PolicyStage
from gateway.stages.scan.guard import Guard
from gateway.stages.scan.stage import GuardStage
from gateway.telemetry.setup import Telemetry, build_telemetry

log = logging.getLogger("gateway")


def build_guard(config: GatewayConfig) -> Guard | None:
    """The detectors with their engine, allowlists and action tables (None: guards are off)."""
    return Guard(config.guards) if config.guards.enabled else None


def build_stages(config: GatewayConfig, limiter: Limiter, guard: Guard | None) -> Pipeline:
    """The configured pre-flight stages, in order: policy first (cheapest, and it may clamp the body),
    then the guards (they see the body that would be sent), limits last (only a request about to
    go upstream reserves rate and budget)."""
    stages: list[Stage] = [PolicyStage()]
    if guard is not None:
        stages.append(GuardStage(guard))
    if limiter.enabled:
        stages.append(LimitStage(limiter))
    return Pipeline(stages)


def build_limiter(config: GatewayConfig) -> Limiter:
    """Prices (shipped table + config) and the rate-limit/budget counters (memory or Redis)."""
    pricing = load_table(config.pricing.file, config.pricing.models)
    counters = open_counters(config.state) if config.limits.rules else MemoryCounters()
    return Limiter(config.limits, pricing, counters)


def build_access(config: GatewayConfig) -> Access:
    """Gateway keys (config + state store), provider keys and policies."""
    registry = KeyRegistry(open_key_store(config.state), config.keys, config.teams, config.users)
    return Access(config, registry)


def build_app(
    config: GatewayConfig, writer: AuditWriter | None = None, telemetry: Telemetry | None = None
) -> web.Application:
    """A complete gateway app; tests build their own with their own config, writer and telemetry."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    limiter = build_limiter(config)
    guard = build_guard(config)
    gateway = Gateway(
        config,
        build_stages(config, limiter, guard),
        writer or AuditWriter(config.audit),
        telemetry or build_telemetry(config),
        build_access(config),
        limiter,
        guard,
    )
    app[GATEWAY] = gateway
    app.router.add_get("/healthz", admin.healthz)
    app.router.add_get("/readyz", admin.readyz)
    app.router.add_get("/metrics", admin.metrics)
    admin.add_internal_routes(app)
    admin_api.add_routes(app)  # before the provider routes: /admin/… never reaches a provider
    for prefix in ("/llm-gateway/{provider}", "/{provider}"):
        app.router.add_route("*", prefix + "/{path:.*}", handle)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    return app


async def _startup(app: web.Application) -> None:
    gateway = app[GATEWAY]
    await gateway.writer.start()
    await gateway.access.start()
    await restore_spend(gateway)
    gateway.telemetry.watch_audit(lambda: gateway.writer.stats)
    await gateway.open_sessions()
    log.info("providers: %s", ", ".join(f"/{n}/ -> {r.config.base_url}" for n, r in gateway.routes.items()))


async def _cleanup(app: web.Application) -> None:
    # Runs after aiohttp has drained in-flight requests (shutdown grace), so every record is queued.
    gateway = app[GATEWAY]
    await gateway.close_sessions()
    await gateway.access.close()
    await gateway.limiter.close()  # settles what finished exchanges still hold
    await gateway.writer.close()
    # Blocking: flushes queued spans and pushes the last metrics over the network.
    await asyncio.get_running_loop().run_in_executor(None, gateway.telemetry.shutdown)


async def restore_spend(gateway: Gateway) -> None:
    """Budgets' spend for this day and month, rebuilt from the audit log (it survives restarts)."""
    limiter = gateway.limiter
    if not any(rule.has_budget for rule in limiter.settings.rules):
        return
    day, month = limiter.period_starts()
    query = spend_since_query(gateway.config.audit, day, month)
    for attempt in range(50):
        try:
            rows = await gateway.writer.query(query.sql, query.parameters)
            break
        except AuditUnavailable:
            await asyncio.sleep(0.1 * min(attempt + 1, 10))
    else:
        log.error("budgets: the audit store did not answer; spend starts from the state store alone")
        return
    try:
        restored = await limiter.restore(rows)
    except StateUnavailable as exc:
        log.error("budgets: could not restore spend into the state store: %s", exc)
        return
    log.info("budgets: spend of %d counters restored from the audit log", restored)
