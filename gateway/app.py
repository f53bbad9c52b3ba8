"""The app factory: routes, startup and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import admin, admin_api
from gateway.audit.writer import AuditWriter
from gateway.auth.access import Access
from gateway.auth.registry import KeyRegistry
from gateway.auth.store import open_key_store
from gateway.config import GatewayConfig
from gateway.proxy import handle
from gateway.runtime import GATEWAY, Gateway
from gateway.stages.base import Stage
from gateway.stages.pipeline import Pipeline
from gateway.stages.policy import PolicyStage
from gateway.stages.scan.stage import ScanOptions, ScanStage
from gateway.telemetry.setup import Telemetry, build_telemetry

log = logging.getLogger("gateway")


def build_stages(config: GatewayConfig) -> Pipeline:
    """The configured pre-flight stages, in order: policy first (cheapest, and it may clamp the body)."""
    stages: list[Stage] = [PolicyStage()]
    if config.scanner.enabled:
        stages.append(
            ScanStage(
                ScanOptions(
                    disabled_rules=frozenset(config.scanner.disabled_rules),
                    max_text_chars=config.scanner.max_text_chars,
                )
            )
        )
    return Pipeline(stages)


def build_access(config: GatewayConfig) -> Access:
    """Gateway keys (config + state store), provider keys and policies."""
    registry = KeyRegistry(open_key_store(config.state), config.keys, config.teams, config.users)
    return Access(config, registry)


def build_app(
    config: GatewayConfig, writer: AuditWriter | None = None, telemetry: Telemetry | None = None
) -> web.Application:
    """A complete gateway app; tests build their own with their own config, writer and telemetry."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    gateway = Gateway(
        config,
        build_stages(config),
        writer or AuditWriter(config.audit),
        telemetry or build_telemetry(config),
        build_access(config),
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
    gateway.telemetry.watch_audit(lambda: gateway.writer.stats)
    await gateway.open_sessions()
    log.info("providers: %s", ", ".join(f"/{n}/ -> {r.config.base_url}" for n, r in gateway.routes.items()))


async def _cleanup(app: web.Application) -> None:
    # Runs after aiohttp has drained in-flight requests (shutdown grace), so every record is queued.
    gateway = app[GATEWAY]
    await gateway.close_sessions()
    await gateway.access.close()
    await gateway.writer.close()
    # Blocking: flushes queued spans and pushes the last metrics over the network.
    await asyncio.get_running_loop().run_in_executor(None, gateway.telemetry.shutdown)
