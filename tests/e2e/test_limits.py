"""Cost per request, rate limits, budgets and fail-open/closed, driven by the official SDKs."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google.genai import errors as genai_errors

from gateway.cli import main as cli_main
from tests.auth_setup import (
    ADMIN_TOKEN,
    ALICE,
    SUPPORT,
    anthropic_client,
    auth_sections,
    gemini_client,
    openai_client,
)
from tests.conftest import RunningGateway
from tests.emulator.server import Emulator
from tests.redis_server import RedisServer

HI = [{"role": "user", "content": "hi"}]


def limits(*rules: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"limits": {"rules": list(rules), **settings}}


def gpt_4o_mini_cost(row: dict[str, Any]) -> Decimal:
    cached = row["cache_read_tokens"] or 0
    billed = (
        (row["input_tokens"] - cached) * Decimal("0.15")
        + cached * Decimal("0.075")
        + row["output_tokens"] * Decimal("0.60")
    )
    return billed / 1_000_000


# --- cost -----------------------------------------------------------------------------------------


async def test_cost_in_the_audit_row_and_header_exact_and_unknown_is_null(make_gateway: Any) -> None:
    gw: RunningGateway = await make_gateway()
    client = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key="sk-test", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    row = await gw.row(raw.headers["x-gateway-request-id"])
    assert row["cost_usd"] == gpt_4o_mini_cost(row) > 0
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == row["cost_usd"]
    stream = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, stream=True
    )
    async for _ in stream.parse():
        pass
    assert "x-gateway-cost-usd" not in stream.headers  # headers left before the usage arrived
    streamed = await gw.row(stream.headers["x-gateway-request-id"])
    assert streamed["cost_usd"] == gpt_4o_mini_cost(streamed)
    unknown = await client.chat.completions.with_raw_response.create(model="acme-internal-1", messages=HI)
    row = await gw.row(unknown.headers["x-gateway-request-id"])
    assert row["cost_usd"] is None and row["input_tokens"] > 0 and row["flags"] == ["cost.unknown"]
    assert "x-gateway-cost-usd" not in unknown.headers


async def test_anthropic_cache_tokens_are_priced(make_gateway: Any) -> None:
    gw: RunningGateway = await make_gateway()
    client = anthropic.AsyncAnthropic(base_url=gw.url("anthropic"), api_key="sk-ant-test", max_retries=0)
    raw = await client.messages.with_raw_response.create(
        model="claude-sonnet-4-5-20250929", max_tokens=50, messages=HI
    )
    row = await gw.row(raw.headers["x-gateway-request-id"])
    plain = row["input_tokens"] - (row["cache_read_tokens"] or 0) - (row["cache_write_tokens"] or 0)
    expected = (
        plain * Decimal(3)
        + (row["cache_read_tokens"] or 0) * Decimal("0.30")
        + (row["cache_write_tokens"] or 0) * Decimal("3.75")
        + row["output_tokens"] * 15
    ) / 1_000_000
    assert row["cost_usd"] == expected


# --- rate limits ------------------------------------------------------------------------------------


async def test_requests_per_minute_per_key_in_each_providers_shape(
    make_gateway: Any, emulator: Emulator
) -> None:
    gw: RunningGateway = await make_gateway(
        **auth_sections(**limits({"name": "per-key", "scope": "key", "rpm": 2}))
    )
    for _ in range(2):
        await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    with pytest.raises(openai.RateLimitError) as refused:
        await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    headers = refused.value.response.headers
    assert 55 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert "2 requests per minute" in refused.value.message and "per-key" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as anthropic_refused:
        await anthropic_client(gw, api_key=ALICE).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=HI
        )
    assert anthropic_refused.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(genai_errors.ClientError) as gemini_refused:
        await gemini_client(gw, ALICE).aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert gemini_refused.value.code == 429 and gemini_refused.value.status == "RESOURCE_EXHAUSTED"
    # another key has its own counter
    await anthropic_client(gw, api_key=SUPPORT).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=10, messages=HI
    )
    assert len(emulator.requests) == 3  # refused requests never reached the upstream
    rows = await gw.rows()
    refused_rows = [r for r in rows if r["status"] == 429]
    assert len(rows) == 6 and len(refused_rows) == 3
    assert {r["rejection_rule"] for r in refused_rows} == {"limits.per-key.rpm"}
    assert {r["outcome"] for r in refused_rows} == {"rejected"}


async def test_tokens_per_minute_reserve_the_estimate_and_settle_to_usage(make_gateway: Any) -> None:
    rule = {"name": "team-tpm", "scope": "team", "match": {"teams": ["ml"]}, "tpm": 400}
    gw: RunningGateway = await make_gateway(**auth_sections(**limits(rule)))
    client = openai_client(gw, ALICE)
    # Reserves ~1 + 300 tokens; settles to the actual usage (a few dozen), so the next one fits.
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=300)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=300)
    await gw.server.app[__import__("gateway.runtime", fromlist=["GATEWAY"]).GATEWAY].limiter.drain()
    with pytest.raises(openai.RateLimitError, match="400 tokens per minute") as refused:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=390)
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "400"
    rows = await gw.rows()
    assert [r["rejection_rule"] for r in rows] == ["", "", "limits.team-tpm.tpm"]


async def test_match_and_per_model_counters(make_gateway: Any) -> None:
    rule = {"name": "models", "scope": "key", "per_model": True, "match": {"models": ["gpt-4o*"]}, "rpm": 1}
    gw: RunningGateway = await make_gateway(**auth_sections(**limits(rule)))
    client = openai_client(gw, ALICE)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    await client.chat.completions.create(model="gpt-4o", messages=HI)  # its own counter
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    await anthropic_client(gw, api_key=ALICE).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=HI
    )


# --- budgets ---------------------------------------------------------------------------------------


async def test_daily_budget_warns_then_rejects_and_survives_a_restart(
    tmp_path: Path, emulator: Emulator, make_gateway: Any
) -> None:
    rule = {"name": "ml-daily", "scope": "team", "daily_usd": 0.00003, "warn_percent": 50}
    sections = auth_sections(**limits(rule, timezone="Europe/Paris"))
    gw: RunningGateway = await make_gateway(**sections)
    client = openai_client(gw, ALICE)
    statuses = []
    for _ in range(40):
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=20)
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(429)
            assert exc.code == "insufficient_quota" and "daily budget of $0.00003" in exc.message
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 2
    rows = await gw.rows()
    spent = sum(r["cost_usd"] or 0 for r in rows)
    assert spent <= Decimal("0.00003")
    assert any(f.startswith("budget.warn:ml-daily.daily_usd") for r in rows for f in r["flags"])
    assert rows[-1]["rejection_rule"] == "limits.ml-daily.daily_usd"
    await gw.server.close()
    # A restart (in-memory counters): the day's spend comes back from the audit log.
    again: RunningGateway = await make_gateway(**sections)
    with pytest.raises(openai.RateLimitError, match="budget"):
        await openai_client(again, ALICE).chat.completions.create(
            model="gpt-4o-mini", messages=HI, max_tokens=20
        )


# --- the state store failing ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_fails_open_or_closed(
    make_gateway: Any, redis_server: RedisServer, mode: str
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "timeout_s": 0.3}
    rule = {"name": "per-key", "scope": "key", "rpm": 100}
    gw: RunningGateway = await make_gateway(**auth_sections(state=state, **limits(rule, on_state_error=mode)))
    client = openai_client(gw, ALICE)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    redis_server.stop()
    try:
        if mode == "open":
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        else:
            with pytest.raises(openai.InternalServerError) as refused:
                await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            assert refused.value.status_code == 503 and "state store unreachable" in refused.value.message
    finally:
        redis_server.start()
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    rows = await gw.rows()
    assert [r["status"] for r in rows] == [200, 200 if mode == "open" else 503, 200]
    if mode == "open":
        assert rows[1]["flags"] == ["limits.fail_open"]
    else:
        assert rows[1]["rejection_rule"] == "limits.state_unavailable"


# --- spend reporting --------------------------------------------------------------------------------


async def test_spend_from_the_admin_api_and_the_cli(
    make_gateway: Any, tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sections = auth_sections()
    gw: RunningGateway = await make_gateway(**sections)
    for _ in range(3):
        await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    await anthropic_client(gw, api_key=SUPPORT).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=10, messages=HI
    )
    await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-acme-internal", messages=HI)
    rows = await gw.rows()
    by_team: dict[str, Decimal] = {}
    for r in rows:
        by_team[r["team"]] = by_team.get(r["team"], Decimal(0)) + (r["cost_usd"] or 0)
    url = str(gw.server.make_url("/admin/spend"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        async with session.get(url, params={"by": "team", "since": "1d"}) as r:
            report = await r.json()
        async with session.get(url, params={"by": "model", "since": "1d", "team": "ml"}) as r:
            models = await r.json()
        async with session.get(url, params={"by": "colour"}) as r:
            assert r.status == 400 and "by: one of team" in (await r.json())["error"]["message"]
    teams = {row["team"]: row for row in report["rows"]}
    assert Decimal(teams["ml"]["cost_usd"]) == by_team["ml"] and teams["ml"]["requests"] == 4
    assert teams["ml"]["unpriced_requests"] == 1
    assert Decimal(teams["support"]["cost_usd"]) == by_team["support"]
    assert Decimal(report["total_usd"]) == sum(by_team.values())
    assert [row["model"] for row in models["rows"]] == ["gpt-4o-mini", "gpt-4o-acme-internal"]
    await gw.server.close()
    # No gateway running: the CLI reads the store itself.
    config = tmp_path / "gateway.yaml"
    config.write_text(
        json.dumps({"audit": {"dsn": gw.config.audit.dsn}, "server": {"state_dir": str(tmp_path / "state")}})
    )
    assert cli_main(["spend", "--by", "key", "--since", "7d", "--json", "-c", str(config)]) == 0
    keys = {row["key"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert keys["alice-laptop"]["requests"] == 4 and keys["support-bot"]["requests"] == 1
    assert cli_main(["spend", "--by", "team", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    assert "spend by team" in table and "ml" in table and "total" in table
