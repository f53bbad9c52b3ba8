"""The official openai SDK through the gateway: same results as direct, one correct audit row each."""

from __future__ import annotations

import hashlib

import aiohttp
import openai
import pytest

from tests.conftest import RunningGateway
from tests.emulator.server import Emulator

KEY = "sk-test-openai-PROVIDERKEY123"


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)


async def test_chat_completion_matches_direct_and_is_audited(
    gateway: RunningGateway, emulator: Emulator
) -> None:
    direct = await client(emulator.base_url("openai")).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50, temperature=0.2
    )
    raw = await client(gateway.url("openai")).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50, temperature=0.2
    )
    via = raw.parse()
    assert via.model_dump() == direct.model_dump()
    assert raw.headers["x-request-id"].startswith("req_")
    row = await gateway.row(raw.headers["x-gateway-request-id"])
    assert row["outcome"] == "ok" and row["status"] == 200
    assert row["provider"] == "openai" and row["operation"] == "chat.completions"
    assert row["requested_model"] == "gpt-4o-mini" and row["response_model"] == via.model
    assert row["response_id"] == via.id
    assert row["input_tokens"] == via.usage.prompt_tokens
    assert row["output_tokens"] == via.usage.completion_tokens
    assert row["cache_read_tokens"] == via.usage.prompt_tokens_details.cached_tokens
    assert row["reasoning_tokens"] == via.usage.completion_tokens_details.reasoning_tokens
    assert row["finish_reason"] == "stop" and row["stream"] is False
    assert row["response_preview"] == via.choices[0].message.content
    assert KEY not in str(row)


async def test_stream_without_include_usage_is_exactly_what_the_client_asked_for(
    gateway: RunningGateway, emulator: Emulator
) -> None:
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            emulator.base_url("openai") + "/v1/chat/completions", data=body, headers=headers
        ) as r:
            direct = await r.read()
        async with s.post(gateway.url("openai") + "/v1/chat/completions", data=body, headers=headers) as r:
            via = await r.read()
            request_id = r.headers["x-gateway-request-id"]
    # The gateway asked upstream for usage …
    sent_upstream = emulator.requests[-1].json()
    assert sent_upstream["stream_options"] == {"include_usage": True}
    # … and the client still gets byte-for-byte the stream it would have had directly.
    assert b'"usage"' not in via
    assert via == direct
    row = await gateway.row(request_id)
    assert row["input_tokens"] and row["output_tokens"] and row["stream"] is True
    assert row["response_sha256"] == hashlib.sha256(via).hexdigest()
    assert row["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert row["request_bytes"] == len(body) and row["response_bytes"] == len(via)
    assert row["response_preview"] == "Hello from the emulator."
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["duration_ms"]


async def test_stream_with_include_usage_via_sdk(gateway: RunningGateway, emulator: Emulator) -> None:
    async def collect(base: str) -> list[dict[str, object]]:
        stream = await client(base).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk.model_dump() async for chunk in stream]

    direct, via = await collect(emulator.base_url("openai")), await collect(gateway.url("openai"))
    assert via == direct
    assert via[-1]["usage"]["total_tokens"] > 0
    (row,) = await gateway.rows()
    assert row["output_tokens"] == via[-1]["usage"]["completion_tokens"]
    assert row["finish_reason"] == "stop"


async def test_responses_api_streamed_and_not(gateway: RunningGateway) -> None:
    c = client(gateway.url("openai"))
    resp = await c.responses.create(model="gpt-4.1", input="hi", instructions="be brief")
    assert resp.output_text == "Hello from the emulator."
    events = [e async for e in await c.responses.create(model="gpt-4.1", input="hi", stream=True)]
    assert events[-1].type == "response.completed"
    rows = await gateway.rows()
    assert [r["operation"] for r in rows] == ["responses", "responses"]
    assert rows[0]["input_tokens"] == resp.usage.input_tokens
    assert rows[0]["cache_read_tokens"] == resp.usage.input_tokens_details.cached_tokens
    assert rows[0]["reasoning_tokens"] == resp.usage.output_tokens_details.reasoning_tokens
    assert rows[1]["output_tokens"] == events[-1].response.usage.output_tokens
    assert rows[1]["response_preview"] == "Hello from the emulator."
    assert rows[1]["stream"] is True


async def test_embeddings_models_and_custom_provider(gateway: RunningGateway, emulator: Emulator) -> None:
    c = client(gateway.url("openai"))
    emb = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens > 0
    models = await c.models.list()
    assert [m.id async for m in models]
    vllm = client(gateway.url("vllm"))
    out = await vllm.chat.completions.create(model="llama-3", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content
    async with aiohttp.ClientSession() as s:  # the long route prefix serves the same
        async with s.get(
            str(gateway.server.make_url("/llm-gateway/openai/v1/models")),
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            assert r.status == 200
    rows = await gateway.rows()
    assert [r["operation"] for r in rows] == ["embeddings", "models.list", "chat.completions", "models.list"]
    assert rows[0]["input_tokens"] == emb.usage.prompt_tokens
    assert rows[2]["provider"] == "vllm" and rows[2]["provider_kind"] == "openai"


async def test_unknown_endpoint_passes_through_and_is_audited(
    gateway: RunningGateway, emulator: Emulator
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway.url("openai") + "/v1/files/abc/content?x=1",
            data=b"not json",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r,
    ):
        assert r.status == 404  # the emulator's own 404 for a path it does not serve, relayed
        body = await r.read()
        request_id = r.headers["x-gateway-request-id"]
    assert emulator.requests[-1].path == "/v1/files/abc/content" and emulator.requests[-1].query == "x=1"
    assert emulator.requests[-1].body == b"not json"
    row = await gateway.row(request_id)
    assert row["operation"] == "passthrough" and row["outcome"] == "upstream_error"
    assert row["response_bytes"] == len(body)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_provider_headers_pass_and_hop_by_hop_do_not(
    gateway: RunningGateway, emulator: Emulator, path: str
) -> None:
    headers = {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Proxy-Authorization": "Basic x",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway.url("openai") + path, json={"model": "m", "input": "x", "messages": []}, headers=headers
        ) as r,
    ):
        assert r.status == 200
        for name in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens", "x-request-id"):
            assert name in r.headers
    got = emulator.requests[-1].headers
    assert got["OpenAI-Organization"] == "org-1" and got["OpenAI-Project"] == "proj-1"
    assert got["Authorization"] == f"Bearer {KEY}"
    assert "X-Drop-Me" not in got and "Proxy-Authorization" not in got
    assert got["Host"] == emulator.url.removeprefix("http://")


async def test_gzip_upstream_reaches_client_valid_and_is_parsed(gateway: RunningGateway) -> None:
    c = openai.AsyncOpenAI(
        base_url=gateway.url("openai") + "/v1",
        api_key=KEY,
        max_retries=0,
        default_headers={"x-emulator-scenario": "gzip"},
    )
    raw = await c.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers.get("content-encoding") == "gzip"
    out = raw.parse()
    chunks = [
        ch
        async for ch in await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
    ]
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == "Hello from the emulator."
    )
    rows = await gateway.rows()
    assert rows[0]["output_tokens"] == out.usage.completion_tokens
    assert rows[1]["output_tokens"] and rows[1]["response_preview"] == "Hello from the emulator."


async def test_stream_ended_by_an_upstream_error_event_is_audited_as_upstream_error(
    gateway: RunningGateway,
) -> None:
    c = openai.AsyncOpenAI(
        base_url=gateway.url("openai") + "/v1",
        api_key=KEY,
        max_retries=0,
        default_headers={"x-emulator-scenario": "error-mid-stream"},
    )
    stream = await c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    (row,) = await gateway.rows()
    assert row["status"] == 200 and row["outcome"] == "upstream_error" and row["error_type"]
