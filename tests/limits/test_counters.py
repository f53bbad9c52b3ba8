"""The check-and-reserve engine, in memory and in a real redis-server: the same answers from both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.limits.counters import (
    BUDGET,
    LEASE,
    WINDOW,
    Check,
    Counters,
    MemoryCounters,
    RedisCounters,
    Settle,
    StateUnavailable,
)
from gateway.state.settings import StateSettings
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisCounters(StateSettings(backend="redis", redis_url=server.url, prefix="t:"))
    yield store
    await store.close()


async def test_a_sliding_window_admits_exactly_its_limit(counters: Counters) -> None:
    rpm = Check(WINDOW, "k:rpm", 5, 60_000, 1)
    verdicts = [await counters.reserve(f"r{i}", [rpm]) for i in range(8)]
    assert [v.ok for v in verdicts] == [True] * 5 + [False] * 3
    refused = verdicts[-1]
    assert refused.failed == 0 and 59_000 < refused.retry_after_ms <= 60_000
    assert verdicts[4].used == (4,)


async def test_the_window_slides(counters: Counters) -> None:
    check = Check(WINDOW, "slide", 2, 300, 1)
    assert (await counters.reserve("a", [check])).ok and (await counters.reserve("b", [check])).ok
    assert not (await counters.reserve("c", [check])).ok
    await asyncio.sleep(0.35)
    assert (await counters.reserve("d", [check])).ok


async def test_all_or_nothing_across_checks(counters: Counters) -> None:
    roomy = Check(WINDOW, "roomy", 100, 60_000, 1)
    tight = Check(WINDOW, "tight", 1, 60_000, 1)
    assert (await counters.reserve("a", [roomy, tight])).ok
    verdict = await counters.reserve("b", [roomy, tight])
    assert not verdict.ok and verdict.failed == 1
    # the refused request reserved nothing on the roomy counter
    assert (await counters.reserve("c", [Check(WINDOW, "roomy", 100, 60_000, 0)])).used == (1,)


async def test_tokens_reserve_an_estimate_and_settle_to_the_actual(counters: Counters) -> None:
    def tpm(amount: int) -> Check:
        return Check(WINDOW, "tpm", 1_000, 60_000, amount)

    assert (await counters.reserve("a", [tpm(800)])).ok
    assert not (await counters.reserve("b", [tpm(300)])).ok
    await counters.settle("a", [Settle(WINDOW, "tpm", 800, 100)])
    assert (await counters.reserve("c", [tpm(300)])).used == (100,)


async def test_a_request_larger_than_the_limit_passes_only_an_empty_window(counters: Counters) -> None:
    big = Check(WINDOW, "big", 1_000, 60_000, 5_000)
    assert (await counters.reserve("a", [big])).ok
    assert not (await counters.reserve("b", [Check(WINDOW, "big", 1_000, 60_000, 1)])).ok


async def test_leases_cap_requests_in_flight_and_expire(counters: Counters) -> None:
    lease = Check(LEASE, "conc", 2, 60_000, 1)
    assert (await counters.reserve("a", [lease])).ok and (await counters.reserve("b", [lease])).ok
    assert not (await counters.reserve("c", [lease])).ok
    await counters.settle("a", [Settle(LEASE, "conc", 1, 0)])
    assert (await counters.reserve("d", [lease])).ok
    short = Check(LEASE, "dead-replica", 1, 200, 1)
    assert (await counters.reserve("e", [short])).ok
    await asyncio.sleep(0.25)  # never released: it expires
    assert (await counters.reserve("f", [short])).ok


async def test_budget_counts_spend_and_reservations(counters: Counters) -> None:
    def budget(amount: int) -> Check:
        return Check(BUDGET, "bud", 1_000, 60_000, amount)

    assert (await counters.reserve("a", [budget(600)])).ok
    assert not (await counters.reserve("b", [budget(500)])).ok  # 600 reserved + 500 > 1000
    await counters.settle("a", [Settle(BUDGET, "bud", 600, 450, keep_ms=60_000)])
    verdict = await counters.reserve("c", [budget(500)])
    assert verdict.ok and verdict.used == (450,)
    await counters.settle("c", [Settle(BUDGET, "bud", 500, 500, keep_ms=60_000)])
    refused = await counters.reserve("d", [budget(100)])
    assert not refused.ok and refused.used == (950,)


async def test_restore_only_raises_spend(counters: Counters) -> None:
    await counters.restore("spent", 700, 60_000)
    await counters.restore("spent", 300, 60_000)  # lower: ignored
    verdict = await counters.reserve("a", [Check(BUDGET, "spent", 1_000, 60_000, 0)])
    assert verdict.used == (700,)


async def test_concurrent_reservations_never_overshoot(counters: Counters) -> None:
    check = Check(BUDGET, "race", 1_000, 60_000, 30)
    verdicts = await asyncio.gather(*(counters.reserve(f"r{i}", [check]) for i in range(100)))
    assert sum(v.ok for v in verdicts) == 33


async def test_an_unreachable_redis_is_reported(redis_server: RedisServer) -> None:
    store = RedisCounters(StateSettings(backend="redis", redis_url=redis_server.url, timeout_s=0.2))
    redis_server.stop()
    try:
        with pytest.raises(StateUnavailable, match="redis"):
            await store.reserve("a", [Check(WINDOW, "x", 1, 1000, 1)])
    finally:
        redis_server.start()
        await store.close()
