"""Three gateway processes sharing one real redis-server: global rate limits and budgets, restarts."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.auth_setup import ADMIN_TOKEN
from tests.e2e.test_cli import ServedGateway, ServeFactory, serve  # noqa: F401  (fixture)
from tests.emulator.server import Emulator
from tests.redis_server import RedisServer

HI = [{"role": "user", "content": "hi"}]
BUDGET_USD = Decimal("0.0002")


async def replicas(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
    redis: RedisServer,
) -> list[ServedGateway]:
    sections: dict[str, Any] = {
        "auth": {"required": True, "admin_token": ADMIN_TOKEN},
        "teams": {"ml": {}},
        "state": {"backend": "redis", "redis_url": redis.url, "prefix": "replicas:"},
        "providers": {"openai": {"base_url": emulator.base_url("openai"), "api_key": "sk-server"}},
        "limits": {
            "rules": [
                {"name": "per-key-rpm", "scope": "key", "match": {"keys": ["rpm-*"]}, "rpm": 60},
                {
                    "name": "per-key-budget",
                    "scope": "key",
                    "match": {"keys": ["budget-*"]},
                    "daily_usd": float(BUDGET_USD),
                },
            ]
        },
    }
    return list(await asyncio.gather(*(serve(tmp_path / f"replica-{i}", **sections) for i in range(3))))


async def create_key(gw: ServedGateway, key_id: str) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        async with session.post(gw.base + "/admin/keys", json={"team": "ml", "id": key_id}) as r:
            assert r.status == 201, await r.text()
            secret: str = (await r.json())["secret"]
    return secret


async def call(gw: ServedGateway, secret: str, **extra: Any) -> int:
    client = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=secret, max_retries=0)
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI, **extra)
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code
    finally:
        await client.close()


async def spent(gws: list[ServedGateway], key_id: str, rows: int) -> Decimal:
    """Total cost of one key across every replica's audit log, once its `rows` rows have landed."""
    deadline = time.monotonic() + 30
    while True:
        total, count = Decimal(0), 0
        for gw in gws:
            for row in await gw.audit("tail?limit=1000"):
                if row["key_id"] == key_id:
                    count += 1
                    total += Decimal(str(row["cost_usd"] or 0))
        if count >= rows or time.monotonic() > deadline:
            assert count == rows
            return total
        await asyncio.sleep(0.2)


async def seen_everywhere(gws: list[ServedGateway], secret: str) -> None:
    for gw in gws:
        for _ in range(40):
            if await call(gw, secret, max_tokens=1) != 401:
                break
            await asyncio.sleep(0.05)


async def test_limits_and_budgets_hold_across_three_replicas_and_a_restart(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
    redis_server: RedisServer,
) -> None:
    gws = await replicas(serve, tmp_path, emulator, redis_server)
    rpm_secret = await create_key(gws[0], "rpm-bot")
    # 150 requests spread over the replicas within seconds: exactly 60 pass in the minute.
    statuses = await asyncio.gather(*(call(gws[i % 3], rpm_secret) for i in range(150)))
    assert statuses.count(200) == 60 and statuses.count(429) == 90

    # 50 concurrent callers against a daily budget: never more than one reservation over it.
    budget_secret = await create_key(gws[1], "budget-bot")
    await seen_everywhere(gws, budget_secret)
    statuses = await asyncio.gather(*(call(gws[i % 3], budget_secret, max_tokens=50) for i in range(50)))
    total = await spent(gws, "budget-bot", 50 + 3)  # plus the three "seen" probes
    one_reservation = Decimal("0.000031")  # ~2 input + 50 output tokens at gpt-4o-mini prices
    assert statuses.count(429) > 0 and total <= BUDGET_USD + one_reservation

    # Restart every replica: the spend and the minute's window are still there (Redis).
    for gw in gws:
        assert await gw.stop() == 0
    gws = await replicas(serve, tmp_path, emulator, redis_server)
    assert await call(gws[0], rpm_secret) == 429
    statuses = await asyncio.gather(*(call(gws[i % 3], budget_secret, max_tokens=50) for i in range(50)))
    total = await spent(gws, "budget-bot", 50 + 3 + 50)  # the same audit directories: both lives' rows
    assert statuses.count(429) > 0
    assert total <= BUDGET_USD + one_reservation  # had the spend been forgotten, it would be ~2x


@pytest.mark.slow
async def test_a_60_rpm_key_gets_about_60_a_minute_across_replicas(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
    redis_server: RedisServer,
) -> None:
    gws = await replicas(serve, tmp_path, emulator, redis_server)
    secret = await create_key(gws[0], "rpm-steady")
    ok = 0
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 120:  # 6 requests a second, for two minutes
        statuses = await asyncio.gather(*(call(gws[j], secret) for j in range(3)))
        ok += statuses.count(200)
        i += 1
        await asyncio.sleep(max(0.0, started + i * 0.5 - time.monotonic()))
    assert 118 <= ok <= 122, ok
