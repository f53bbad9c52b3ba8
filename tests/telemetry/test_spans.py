"""Spans through real SDK clients: names, GenAI attributes, parent-child links, traceparent, errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from gateway.config import ProviderConfig
from tests.conftest import RunningGateway, gateway_config, start_gateway
from tests.e2e.test_failures import gemini_client
from tests.emulator.server import Emulator
from tests.telemetry.conftest import Captured
from tests.telemetry.otlp_decoded import DecodedSpan

KEY = "sk-test-openai-PROVIDERKEY123"
AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"


def openai_client(base: str, headers: dict[str, str] | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, default_headers=headers)


def kind(k: SpanKind) -> Callable[[DecodedSpan], bool]:
    return lambda s: s.kind is k


def the_server(c: Captured) -> DecodedSpan:
    return c.span(kind(SpanKind.SERVER))


def the_model(c: Captured) -> DecodedSpan:
    return c.span(lambda s: s.kind is SpanKind.CLIENT and "gen_ai.operation.name" in (s.attributes or {}))


def the_http_client(c: Captured) -> DecodedSpan:
    return c.span(lambda s: s.kind is SpanKind.CLIENT and "gen_ai.operation.name" not in (s.attributes or {}))


def leaked(c: Captured, secret: str) -> bool:
    """Did `secret` leave the gateway in any span export?"""
    return secret.encode() in c.exported_bytes()


async def test_chat_spans_follow_the_genai_conventions_and_continue_the_agents_trace(
    make_gateway: Any, in_memory: Any, captured: Captured, emulator: Emulator
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    raw = await openai_client(
        gw.url("openai"), {"traceparent": TRACEPARENT}
    ).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
    )
    completion = raw.parse()
    server, model, http = the_server(captured), the_model(captured), the_http_client(captured)

    # The agent's trace continues: gateway SERVER ⟶ GenAI CLIENT ⟶ HTTP CLIENT, one trace id.
    assert {f"{s.trace_id:032x}" for s in (server, model, http)} == {AGENT_TRACE}
    assert server.parent_span_id is not None and f"{server.parent_span_id:016x}" == AGENT_SPAN
    assert model.parent_span_id == server.span_id
    assert http.parent_span_id == model.span_id

    assert server.name == "POST /openai/{path}"
    a = dict(server.attributes or {})
    assert a["http.request.method"] == "POST" and a["http.route"] == "/openai/{path}"
    assert a["http.response.status_code"] == 200 and a["url.path"] == "/openai/v1/chat/completions"
    assert a["llm_gateway.request_id"] == raw.headers["x-gateway-request-id"]

    assert model.name == "chat gpt-4o-mini"
    m = dict(model.attributes or {})
    assert m["gen_ai.operation.name"] == "chat" and m["gen_ai.provider.name"] == "openai"
    assert m["gen_ai.request.model"] == "gpt-4o-mini"
    assert m["gen_ai.request.max_tokens"] == 50
    assert m["gen_ai.request.temperature"] == 0.2 and m["gen_ai.request.top_p"] == 0.9
    assert m["gen_ai.response.model"] == completion.model
    assert m["gen_ai.response.id"] == completion.id
    assert m["gen_ai.response.finish_reasons"] == ("stop",)
    assert completion.usage is not None
    assert m["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert m["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert m["server.address"] == "127.0.0.1" and m["server.port"] == URL(emulator.base_url("openai")).port
    assert "error.type" not in m and model.status_code is StatusCode.UNSET
    assert "gen_ai.input.messages" not in m  # content capture is opt-in

    h = dict(http.attributes or {})
    assert h["http.request.method"] == "POST" and h["http.response.status_code"] == 200

    # Correlation: the response names the trace; the audit row stores trace and span ids.
    trace_id, span_id = f"{server.trace_id:032x}", f"{server.span_id:016x}"
    assert raw.headers["traceresponse"] == f"00-{trace_id}-{span_id}-01"
    row = await gw.row(raw.headers["x-gateway-request-id"])
    assert (row["trace_id"], row["span_id"]) == (trace_id, span_id)
    # Providers do not need our traceparent: the upstream got the agent's header unchanged.
    assert emulator.requests[-1].headers["traceparent"] == TRACEPARENT
    assert not leaked(captured, KEY)


async def test_upstream_gets_a_child_traceparent_only_when_configured(
    tmp_path: Path, in_memory: Any, captured: Captured, emulator: Emulator
) -> None:
    config = gateway_config(tmp_path, emulator)
    traced = ProviderConfig("traced", "openai", emulator.base_url("openai"), forward_traceparent=True)
    config = dataclasses.replace(config, providers={**config.providers, "traced": traced})
    gw = await start_gateway(config, telemetry=in_memory(config))
    try:
        # Not configured: nothing added (and no helper header leaks upstream).
        await openai_client(gw.url("openai")).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        plain = emulator.requests[-1].headers
        assert "traceparent" not in plain and not any(h.startswith("x-llm-gateway") for h in plain)
        # Configured: a child of the gateway's HTTP CLIENT span, in the agent's trace.
        await openai_client(gw.url("traced"), {"traceparent": TRACEPARENT}).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        sent = emulator.requests[-1].headers["traceparent"]
    finally:
        await gw.server.close()
    http = [
        s
        for s in captured.finished()
        if s.kind is SpanKind.CLIENT and "gen_ai.operation.name" not in (s.attributes or {})
    ][-1]
    assert sent == f"00-{AGENT_TRACE}-{http.span_id:016x}-01"


async def test_anthropic_stream_records_first_chunk_event_and_cache_usage(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    client = anthropic.AsyncAnthropic(base_url=gw.url("anthropic"), api_key=KEY, max_retries=0)
    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = await stream.get_final_message()
    model = the_model(captured)
    assert model.name == "chat claude-sonnet-4-5"
    m = dict(model.attributes or {})
    assert m["gen_ai.provider.name"] == "anthropic"
    assert m["gen_ai.response.id"] == final.id
    assert m["gen_ai.usage.output_tokens"] == final.usage.output_tokens
    expected_input = (
        final.usage.input_tokens
        + (final.usage.cache_read_input_tokens or 0)
        + (final.usage.cache_creation_input_tokens or 0)
    )
    assert m["gen_ai.usage.input_tokens"] == expected_input  # semconv: input includes cached tokens
    assert m["gen_ai.usage.cache_read.input_tokens"] == (final.usage.cache_read_input_tokens or 0)
    assert m["gen_ai.usage.cache_creation.input_tokens"] == (final.usage.cache_creation_input_tokens or 0)
    events = [e.name for e in model.events]
    assert events == ["llm_gateway.first_chunk"]
    assert model.start_time < model.events[0].timestamp < model.end_time


async def test_gemini_key_in_the_query_never_reaches_a_span(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    async with aiohttp.ClientSession() as s:
        url = gw.url("gemini") + f"/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}"
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        async with s.post(url, json=body) as r:
            assert r.status == 200
    model = the_model(captured)
    assert model.name == "generate_content gemini-2.5-flash"
    assert dict(model.attributes or {})["gen_ai.provider.name"] == "gcp.gemini"
    http = dict(the_http_client(captured).attributes or {})
    assert "key=REDACTED" in http["url.full"]
    assert not leaked(captured, KEY)


async def test_google_genai_sdk_stream_has_one_trace(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    async for _ in await gemini_client(gw.url("gemini")).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"
    ):
        pass
    model = the_model(captured)
    assert dict(model.attributes or {})["gen_ai.usage.output_tokens"] > 0
    assert [e.name for e in model.events] == ["llm_gateway.first_chunk"]
    assert len({s.trace_id for s in captured.finished()}) == 1


@pytest.mark.parametrize(
    ("scenario", "status", "error_type"),
    [("error:500", 500, "server_error"), ("error:429", 429, "rate_limit_exceeded")],
)
async def test_upstream_errors_mark_the_genai_span(
    make_gateway: Any, in_memory: Any, captured: Captured, scenario: str, status: int, error_type: str
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    with pytest.raises(openai.APIStatusError) as info:
        await openai_client(gw.url("openai"), {"x-emulator-scenario": scenario}).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == status
    model, server = the_model(captured), the_server(captured)
    assert model.status_code is StatusCode.ERROR
    row = await gw.row(info.value.response.headers["x-gateway-request-id"])
    assert dict(model.attributes or {})["error.type"] == row["error_type"] != ""
    # Server spans: only 5xx is the server's error; a 4xx is the caller's.
    assert (server.status_code is StatusCode.ERROR) is (status >= 500)
    assert dict(server.attributes or {})["llm_gateway.outcome"] == "upstream_error"


async def test_timeout_is_an_error_span_with_a_504(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory, timeouts={"first_byte_s": 0.2})
    with pytest.raises(openai.APIStatusError) as info:
        await openai_client(
            gw.url("openai"), {"x-emulator-scenario": "slow-first-byte:2"}
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 504
    model, server = the_model(captured), the_server(captured)
    assert dict(model.attributes or {})["error.type"] == "upstream_timeout"
    assert server.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "504"


async def test_findings_are_span_events_without_the_secret(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    secret = "AKIA" + "Q3VZ7XKJ2MNP4RST"
    with pytest.raises(openai.PermissionDeniedError):  # credentials in requests are blocked by default
        await openai_client(gw.url("openai")).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"my key is {secret}"}]
        )
    server = the_server(captured)
    findings = [e for e in server.events if e.name == "llm_gateway.guard.finding"]
    attributes = dict(findings[0].attributes or {}) if findings else {}
    assert attributes["rule"] == "aws_access_key_id" and attributes["action"] == "block"
    assert not leaked(captured, secret)


async def test_rejected_before_the_model_call_has_no_genai_span(
    make_gateway: Any, in_memory: Any, captured: Captured
) -> None:
    gw: RunningGateway = await make_gateway(with_telemetry=in_memory)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url("openai") + "/v1/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            assert r.headers["traceresponse"].startswith("00-")
    assert [s.kind for s in captured.finished()] == [SpanKind.SERVER]
    assert dict(the_server(captured).attributes or {})["llm_gateway.outcome"] == "bad_request"


async def test_content_on_spans_is_opt_in(make_gateway: Any, in_memory: Any, captured: Captured) -> None:
    gw = await make_gateway(with_telemetry=in_memory, **{"telemetry": {"capture_content": True}})
    await openai_client(gw.url("openai")).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    m = dict(the_model(captured).attributes or {})
    assert json.loads(m["gen_ai.system_instructions"]) == [{"type": "text", "content": "be brief"}]
    assert json.loads(m["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    output = json.loads(m["gen_ai.output.messages"])
    assert output[0]["role"] == "assistant" and output[0]["parts"][0]["content"]


@pytest.mark.parametrize("mode", ["redacted", "none"])
async def test_content_on_spans_follows_the_audit_content_mode(
    make_gateway: Any, in_memory: Any, captured: Captured, mode: str
) -> None:
    secret = "jane.doe@acme-corp.io"
    gw = await make_gateway(
        with_telemetry=in_memory,
        telemetry={"capture_content": True},
        audit={"content": mode},
    )
    await openai_client(gw.url("openai")).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"mail {secret} the report"}]
    )
    m = dict(the_model(captured).attributes or {})
    assert not leaked(captured, secret)
    if mode == "redacted":
        assert json.loads(m["gen_ai.input.messages"])[0]["parts"][0]["content"] == (
            "mail [REDACTED:email_address] the report"
        )
    else:
        assert "gen_ai.input.messages" not in m and "gen_ai.output.messages" not in m


async def test_without_tracing_there_is_no_traceresponse_and_no_trace_id(gateway: RunningGateway) -> None:
    raw = await openai_client(gateway.url("openai")).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert "traceresponse" not in raw.headers
    row = await gateway.row(raw.headers["x-gateway-request-id"])
    assert row["trace_id"] == "" and row["span_id"] == ""


def test_one_trace_config_per_upstream_session(in_memory: Any, tmp_path: Path, emulator: Emulator) -> None:
    """The caller's trace headers are kept by hooks inside the instrumentation's own TraceConfig:
    aiohttp runs one trace per upstream request instead of three."""
    telemetry = in_memory(gateway_config(tmp_path, emulator))
    for forward in (False, True):
        (config,) = telemetry.trace_configs(forward)
        assert len(config.on_request_start) == (1 if forward else 3)
    telemetry.shutdown()
