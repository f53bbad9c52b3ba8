"""Cost, unknown-cost, limit-rejection and flag metrics, and their Prometheus names."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from tests.auth_setup import ALICE, auth_sections, openai_client
from tests.conftest import RunningGateway
from tests.telemetry.conftest import Captured

HI = [{"role": "user", "content": "hi"}]


async def test_cost_metrics_by_provider_model_team_and_key(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    rule = {"name": "tiny", "scope": "key", "rpm": 2}
    sections = auth_sections(telemetry={"identity_labels": True}, limits={"rules": [rule]})
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory, **sections)
    client = openai_client(gw, ALICE)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    await client.chat.completions.create(model="gpt-4o-acme-internal", messages=HI)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    rows = await gw.rows()
    (cost,) = captured.points("llm_gateway.cost")
    assert cost.attributes == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "team": "ml",
        "key_id": "alice-laptop",
    }
    assert cost.value == pytest.approx(float(rows[0]["cost_usd"]))
    (unknown,) = captured.points("llm_gateway.cost.unknown")
    assert unknown.attributes["model"] == "gpt-4o-acme-internal" and unknown.value == 1
    (rejected,) = captured.points("llm_gateway.limits.rejections")
    assert rejected.attributes == {"rule": "limits.tiny.rpm"} and rejected.value == 1
    async with aiohttp.ClientSession() as session:
        async with session.get(str(gw.server.make_url("/metrics"))) as r:
            text = await r.text()
    for name in (
        "llm_gateway_cost_USD_total",
        "llm_gateway_cost_unknown_total",
        "llm_gateway_limits_rejections_total",
        "llm_gateway_flags_total",
    ):
        assert name in text, name
