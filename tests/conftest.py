"""Suite-wide fixtures: the upstream emulator, and a real gateway (real chDB audit) in front of it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.audit.writer import AuditWriter
from gateway.config import GatewayConfig, ProviderConfig, load_config
from gateway.runtime import GATEWAY
from gateway.telemetry.setup import Telemetry
from tests.emulator.server import Emulator

pytest_plugins = ["tests.emulator.fixtures", "tests.redis_server"]


@dataclasses.dataclass
class RunningGateway:
    """A gateway serving on loopback, and how to read back what it audited."""

    server: TestServer
    config: GatewayConfig
    writer: AuditWriter

    def url(self, provider: str) -> str:
        return str(self.server.make_url(f"/{provider}"))

    async def rows(self, where: str = "1", params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Flush the writer and read audit rows back from the real store, oldest first."""
        await self.writer.flush()
        sql = f"SELECT * FROM {self.config.audit.qualified_table} WHERE {where} ORDER BY ts, request_id"
        return await self.writer.query(sql, params or {})

    async def row(self, request_id: str) -> dict[str, Any]:
        found = await self.rows("request_id = {rid:String}", {"rid": request_id})
        assert len(found) == 1, f"expected exactly one audit row for {request_id}, got {len(found)}"
        return found[0]


def gateway_config(tmp_path: Path, emulator: Emulator, **sections: Any) -> GatewayConfig:
    """Providers pointed at the emulator (plus a custom openai-kind `vllm`), audit and state in tmp_path.

    `provider_keys={"openai": "sk-…"}` sets the server-side provider keys (for gateway-key callers);
    `provider_options={"vllm": {"auth_header": "api-key"}}` sets other ProviderConfig fields.
    """
    provider_keys: dict[str, str] = sections.pop("provider_keys", {})
    provider_options: dict[str, dict[str, Any]] = sections.pop("provider_options", {})
    raw: dict[str, Any] = {
        "server": {"state_dir": str(tmp_path / "state")},
        "state": {"path": str(tmp_path / "state")},
        "audit": {
            "dsn": f"chdb://{tmp_path}/audit",
            "spool_dir": str(tmp_path / "spool"),
            "flush_interval_s": 0.05,
            "replay_interval_s": 0.1,
            # In-process gateways start fast; `serve` tests (tests/e2e/test_cli.py) and
            # tests/audit/test_process.py run the default child-process store.
            "isolation": "thread",
        },
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) else raw.__setitem__(key, value)
    config = load_config(None, raw)
    providers = {
        name: ProviderConfig(name, name, emulator.base_url(name), api_key=provider_keys.get(name, ""))
        for name in ("openai", "anthropic", "gemini")
    }
    providers["vllm"] = ProviderConfig(
        "vllm", "openai", emulator.base_url("openai"), api_key=provider_keys.get("vllm", "")
    )
    for name, options in provider_options.items():
        providers[name] = dataclasses.replace(providers[name], **options)
    return dataclasses.replace(config, providers=providers)


async def start_gateway(
    config: GatewayConfig, writer: AuditWriter | None = None, telemetry: Telemetry | None = None
) -> RunningGateway:
    app = build_app(config, writer, telemetry)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)  # TestServer always cancels handlers on disconnect
    return RunningGateway(server, config, app[GATEWAY].writer)


@pytest_asyncio.fixture
async def make_gateway(tmp_path: Path, emulator: Emulator) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await make_gateway(capture={...})` starts a gateway with config overrides."""
    started: list[RunningGateway] = []

    async def make(
        writer: AuditWriter | None = None,
        with_telemetry: Callable[[GatewayConfig], Telemetry] | None = None,
        **sections: Any,
    ) -> RunningGateway:
        """`with_telemetry` builds the gateway's Telemetry from its config (default: `build_telemetry`)."""
        config = gateway_config(tmp_path, emulator, **sections)
        gw = await start_gateway(config, writer, with_telemetry(config) if with_telemetry else None)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.server.close()


@pytest_asyncio.fixture
async def gateway(make_gateway: Callable[..., Any]) -> RunningGateway:
    """A gateway on embedded defaults in front of the emulator."""
    gw: RunningGateway = await make_gateway()
    return gw
