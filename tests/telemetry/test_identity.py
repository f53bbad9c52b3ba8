"""Key id, user and team on spans and (when enabled) as metric labels; no secret in any telemetry."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from opentelemetry.trace import SpanKind

from tests.auth_setup import ALICE, SUPPORT, all_secrets, auth_sections, openai_client
from tests.conftest import RunningGateway
from tests.telemetry.conftest import Captured

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_identity_on_spans_and_metric_labels_and_no_secret_in_telemetry(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    sections = auth_sections(telemetry={"identity_labels": True})
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory, **sections)
    await openai_client(gw, ALICE).chat.completions.create(**CHAT)
    with pytest.raises(openai.PermissionDeniedError):  # support may only use claude-*-haiku*
        await openai_client(gw, SUPPORT).chat.completions.create(**CHAT)
    # A gateway key in Gemini's ?key= parameter: replaced upstream, and absent from every span.
    url = gw.url("gemini") + f"/v1beta/models/gemini-2.5-flash:generateContent?key={ALICE}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}) as r:
            assert r.status == 200

    servers = [s for s in captured.finished() if s.kind is SpanKind.SERVER]
    identities = sorted(
        (
            s.attributes["llm_gateway.key_id"],
            s.attributes["llm_gateway.team"],
            s.attributes.get("llm_gateway.user"),
        )
        for s in servers
        if s.attributes
    )
    assert identities == [("alice-laptop", "ml", "alice")] * 2 + [("support-bot", "support", None)]

    requests = captured.points("llm_gateway.requests")
    labels = sorted((p.attributes["team"], p.attributes["key_id"], p.attributes["outcome"]) for p in requests)
    assert labels == [
        ("ml", "alice-laptop", "ok"),
        ("ml", "alice-laptop", "ok"),
        ("support", "support-bot", "rejected"),
    ]
    assert all("user" not in p.attributes for p in requests)  # users are not a label: unbounded

    telemetry = [captured.exported_bytes().decode("utf-8", "replace")]
    telemetry.append(captured.metrics.get_metrics_data().to_json())
    async with aiohttp.ClientSession() as session:
        async with session.get(str(gw.server.make_url("/metrics"))) as r:
            telemetry.append(await r.text())
    everything = json.dumps(telemetry)
    assert "alice-laptop" in everything
    for secret in all_secrets():
        assert secret not in everything, "a secret reached a span or a metric"
