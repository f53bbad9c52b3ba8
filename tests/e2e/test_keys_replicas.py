"""Two gateway replicas sharing keys through a real redis-server: a change on one is live on both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.auth_setup import ADMIN_TOKEN, auth_sections
from tests.conftest import RunningGateway
from tests.e2e.test_keys_cli import refused_within, works_within
from tests.redis_server import RedisServer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin(gw: RunningGateway, method: str, path: str, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        async with session.request(method, str(gw.server.make_url(path)), **kwargs) as r:
            assert r.status < 300, await r.text()
            return await r.json()


def replica(tmp_path: Path, name: str) -> dict[str, Any]:
    """Sections giving a second in-process replica its own audit store, spool and state directory."""
    return {
        "server": {"state_dir": str(tmp_path / name / "state")},
        "audit": {"dsn": f"chdb://{tmp_path / name / 'audit'}", "spool_dir": str(tmp_path / name / "spool")},
    }


async def test_a_key_created_or_revoked_on_one_replica_is_seen_by_the_other_within_a_second(
    make_gateway: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "prefix": "replicas:"}
    one: RunningGateway = await make_gateway(**auth_sections(state=state))
    two: RunningGateway = await make_gateway(**auth_sections(state=state), **replica(tmp_path, "two"))
    created = await admin(one, "POST", "/admin/keys", json={"team": "ml"})
    started = time.monotonic()
    await works_within(created["secret"], two.url("openai"), 1.0)
    seen_after = time.monotonic() - started
    await admin(two, "POST", f"/admin/keys/{created['key']['id']}/revoke")
    revoked_after = await refused_within(created["secret"], one.url("openai"), 1.0)
    assert seen_after < 1.0 and revoked_after < 1.0
    listed = await admin(two, "GET", "/admin/keys?team=ml")
    assert created["key"]["id"] in {k["id"] for k in listed["keys"]}


async def test_readiness_waits_for_the_key_store_and_serving_survives_its_outage(
    make_gateway: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url}
    gw: RunningGateway = await make_gateway(**auth_sections(state=state))
    created = await admin(gw, "POST", "/admin/keys", json={"team": "ml"})
    redis_server.stop()
    await works_within(created["secret"], gw.url("openai"), 1.0)  # last known keys keep serving
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        async with session.post(str(gw.server.make_url("/admin/keys")), json={"team": "ml"}) as r:
            assert r.status == 503 and "unavailable" in (await r.json())["error"]["message"]
    redis_server.start()
    # A replica started while the store is down is not ready (its stored keys are unknown).
    redis_server.stop()
    late: RunningGateway = await make_gateway(**auth_sections(state=state), **replica(tmp_path, "late"))
    async with aiohttp.ClientSession() as session:
        async with session.get(str(late.server.make_url("/readyz"))) as r:
            assert r.status == 503
