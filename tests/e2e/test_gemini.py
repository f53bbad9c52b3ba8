"""The official google-genai SDK through the gateway."""

from __future__ import annotations

from google import genai
from google.genai import types

from tests.conftest import RunningGateway
from tests.emulator.server import Emulator

KEY = "AIzaSyTEST-PROVIDERKEY-0000000000000000"


def client(base: str, **headers: str) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base, headers=headers or None))


async def test_generate_content_matches_direct(gateway: RunningGateway, emulator: Emulator) -> None:
    direct = await client(emulator.base_url("gemini")).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )
    via = await client(gateway.url("gemini")).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )
    assert via.model_dump(exclude={"sdk_http_response"}) == direct.model_dump(exclude={"sdk_http_response"})
    (row,) = await gateway.rows()
    u = via.usage_metadata
    assert row["operation"] == "generate_content" and row["requested_model"] == "gemini-2.5-flash"
    assert row["input_tokens"] == u.prompt_token_count
    assert row["output_tokens"] == u.candidates_token_count + u.thoughts_token_count
    assert row["cache_read_tokens"] == u.cached_content_token_count
    assert row["reasoning_tokens"] == u.thoughts_token_count
    assert row["finish_reason"] == "STOP" and row["response_preview"] == via.text
    assert emulator.requests[-1].headers["x-goog-api-key"] == KEY
    assert KEY not in str(row)


async def test_stream_generate_content_sse(gateway: RunningGateway, emulator: Emulator) -> None:
    async def collect(base: str) -> list[str]:
        stream = await client(base).aio.models.generate_content_stream(model="gemini-2.5-pro", contents="hi")
        return [chunk.text or "" async for chunk in stream]

    assert await collect(gateway.url("gemini")) == await collect(emulator.base_url("gemini"))
    assert "alt=sse" in emulator.requests[-1].query
    rows = await gateway.rows()
    assert rows[0]["stream"] is True and rows[0]["operation"] == "stream_generate_content"
    assert rows[0]["output_tokens"] and rows[0]["response_preview"] == "Hello from the emulator."


async def test_count_tokens_and_embeddings(gateway: RunningGateway) -> None:
    c = client(gateway.url("gemini"))
    count = await c.aio.models.count_tokens(model="gemini-2.5-flash", contents="hello there")
    assert count.total_tokens
    emb = await c.aio.models.embed_content(model="text-embedding-004", contents=["a", "b"])
    assert len(emb.embeddings) == 2
    rows = await gateway.rows()
    assert [r["operation"] for r in rows] == ["count_tokens", "batch_embed_contents"]


async def test_key_in_query_string_never_reaches_the_audit(
    gateway: RunningGateway, emulator: Emulator
) -> None:
    import aiohttp

    url = gateway.url("gemini") + f"/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}) as r:
            assert r.status == 200
    assert f"key={KEY}" in emulator.requests[-1].query
    (row,) = await gateway.rows()
    assert KEY not in str(row) and row["endpoint"] == "/v1beta/models/gemini-2.5-flash:generateContent"
