"""The app-wide objects, built once per app by the factory and reached through `request.app[GATEWAY]`."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
from aiohttp import web

from gateway.audit.content import AuditContent
from gateway.audit.writer import AuditWriter
from gateway.auth.access import Access
from gateway.config import GatewayConfig, ProviderConfig, Timeouts
from gateway.errors import ErrorCode, GatewayError
from gateway.exchange import Exchange
from gateway.limits.limiter import FLAG_COST_UNKNOWN, Limiter
from gateway.providers import ADAPTERS, ProviderAdapter
from gateway.stages.pipeline import Pipeline
from gateway.stages.scan.guard import Guard
from gateway.telemetry.setup import Telemetry

access_log = logging.getLogger("gateway.access")


@dataclass(frozen=True, slots=True)
class Route:
    """A configured provider with its adapter and its own keep-alive connection pool."""

    config: ProviderConfig
    adapter: ProviderAdapter
    session: aiohttp.ClientSession
    timeouts: Timeouts

    def credential_header(self, secret: str) -> tuple[str, str]:
        """Where the server-side key goes: the kind's header, or the provider's `auth_header`."""
        name = self.config.auth_header
        if not name:
            return self.adapter.credential_header(secret)
        return name, f"Bearer {secret}" if name.lower() == "authorization" else secret


class Gateway:
    """Holds config, routes, pipeline, audit writer and telemetry; begins and finishes each exchange."""

    def __init__(
        self,
        config: GatewayConfig,
        pipeline: Pipeline,
        writer: AuditWriter,
        telemetry: Telemetry,
        access: Access,
        limiter: Limiter,
        guard: Guard | None = None,
    ) -> None:
        self.config = config
        self.guard = guard
        capture = config.capture
        self.content = AuditContent(
            config.audit.content, capture.request_preview_chars, capture.response_preview_chars
        )
        self.limiter = limiter
        self.pricing = limiter.pricing
        self.pipeline = pipeline
        self.writer = writer
        self.telemetry = telemetry
        self.access = access
        self.routes: dict[str, Route] = {}
        self.default_adapter: ProviderAdapter = ADAPTERS["openai"]  # shape for errors before routing
        self.log_requests = config.server.access_log and access_log.isEnabledFor(logging.INFO)

    async def open_sessions(self) -> None:
        for name, provider in self.config.providers.items():
            timeouts = self.config.timeouts_for(provider)
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # relay the upstream's bytes as they are; observers decode a copy
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=self.telemetry.trace_configs(provider.forward_traceparent) or None,
            )
            self.routes[name] = Route(provider, ADAPTERS[provider.kind], session, timeouts)

    async def close_sessions(self) -> None:
        for route in self.routes.values():
            await route.session.close()

    @property
    def ready(self) -> bool:
        return bool(self.routes) and self.writer.ready and self.access.registry.loaded

    def route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes))
            raise GatewayError(
                ErrorCode.NOT_FOUND, f"unknown provider '{name}'; configured providers: {known}"
            )
        return route

    def begin_exchange(self, request: web.Request) -> Exchange:
        ex = Exchange(
            request_id=os.urandom(16).hex(),
            method=request.method,
            path="/" + request.match_info.get("path", ""),
            provider=request.match_info.get("provider", ""),
            client_address=request.remote or "",
            user_agent=request.headers.get("User-Agent", "")[:256],
        )
        self.telemetry.begin(ex, request)
        return ex

    def price(self, ex: Exchange) -> Decimal | None:
        """The exchange's cost in USD from its usage (once); None, and a flag, when unpriced."""
        if ex.priced:
            return ex.cost
        ex.priced = True
        usage = ex.summary.usage
        if usage.input_tokens is None and usage.output_tokens is None:
            return None
        kind = ex.provider_kind or ex.provider
        requested = ex.view.model if ex.view is not None else ""
        for model in dict.fromkeys(m for m in (ex.summary.model, requested) if m):
            cost = self.pricing.cost(ex.provider, kind, model, usage)
            if cost is not None:
                ex.cost = cost
                return cost
        ex.flags.append(FLAG_COST_UNKNOWN)
        return None

    def finish_exchange(self, ex: Exchange) -> None:
        """Exactly once per request, whatever happened: one audit record, spans, metrics, one log line."""
        if ex.finished:
            return
        ex.finished = True
        ex.finished_at = time.perf_counter()
        cost = self.price(ex)
        if ex.reservation is not None:
            ex.flags.extend(ex.reservation.flags)
            self.limiter.settle_soon(ex.reservation, ex.summary.usage, cost, ex.first_byte is not None)
        guard = ex.response_guard
        if guard is not None:
            guard.close()  # scans what it observed of a body relayed as it came
            ex.findings.extend(guard.findings.all())
            if ex.sensitive is None:
                ex.sensitive = guard.sensitive
            else:
                ex.sensitive.update(guard.sensitive)
        redact = self.guard.audit_redactor(ex.sensitive) if self.guard and self.content.redacts else None
        ex.keeps_content, ex.redact_content = self.content.keeps_text, redact
        record = ex.record(self.content, redact)
        self.writer.submit(record)
        self.telemetry.finish(ex, record)
        if self.log_requests:
            # Path only: query strings can carry keys (?key=…) and never reach the logs.
            access_log.info(
                "%s %s /%s%s %d %s %.1fms",
                record.request_id,
                record.method,
                record.provider,
                record.endpoint,
                record.status,
                record.outcome,
                record.duration_ms,
            )


GATEWAY = web.AppKey("gateway", Gateway)
