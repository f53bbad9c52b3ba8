"""Scenarios and wire details, checked with a plain HTTP client that shows the raw bytes."""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.emulator import SCENARIO_HEADER, Emulator, Scenario, ScenarioError, parse_scenario
from tests.emulator.scenarios import STALL_SECONDS

PROMPT = [{"role": "user", "content": "Say hello."}]
GEMINI_PROMPT = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}

AUTH: dict[str, dict[str, str]] = {
    "openai": {"Authorization": "Bearer sk-test"},
    "anthropic": {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
    "gemini": {"x-goog-api-key": "gemini-test"},
}

# (provider, path, body, bytes the complete stream ends with)
STREAMS: list[tuple[str, str, dict[str, Any], bytes]] = [
    (
        "openai",
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": PROMPT, "stream": True},
        b"data: [DONE]\n\n",
    ),
    ("openai", "/v1/responses", {"model": "gpt-4.1", "input": "Hi", "stream": True}, b"}}\n\n"),
    (
        "anthropic",
        "/v1/messages",
        {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": PROMPT, "stream": True},
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ),
    (
        "gemini",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        GEMINI_PROMPT,
        b"}\r\n\r\n",
    ),
]

# (provider, path, body) of every non-streaming generation endpoint
DOCUMENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "/v1/chat/completions", {"model": "gpt-4o", "messages": PROMPT}),
    ("openai", "/v1/responses", {"model": "gpt-4.1", "input": "Hi"}),
    ("anthropic", "/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": PROMPT}),
    ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_PROMPT),
]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(emu: Emulator, provider: str, path: str) -> str:
    return emu.base_url(provider) + path


def headers(provider: str, scenario: str | None = None, **extra: str) -> dict[str, str]:
    return {**AUTH[provider], **({SCENARIO_HEADER: scenario} if scenario else {}), **extra}


# --- Scenario parsing ---------------------------------------------------------------------------


def test_parse_scenario_combinations() -> None:
    assert parse_scenario(None) == Scenario()
    assert parse_scenario("gzip, slow-first-byte:0.5,delay:20") == Scenario(
        gzip=True, slow_first_byte=0.5, delay=0.02
    )
    assert parse_scenario("drop-mid-stream").drop_after == 2
    assert parse_scenario("error-mid-stream").error_mid_stream == 500
    assert parse_scenario("error:529,large-stream:100").error_status == 529


@pytest.mark.parametrize("text", ["nonsense", "error:200", "error", "gzip:1", "delay:-1", "stall-after:x"])
def test_parse_scenario_rejects(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse_scenario(text)


async def test_unknown_scenario_is_a_provider_400(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o", "messages": PROMPT}
    async with http.post(
        url(emulator, "openai", "/v1/chat/completions"), json=body, headers=headers("openai", "bogus")
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert "bogus" in error["message"] and error["type"] == "invalid_request_error"


async def test_default_scenario_applies_without_header(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    emulator.scenario = "error:503"
    async with http.get(url(emulator, "anthropic", "/v1/models"), headers=headers("anthropic")) as response:
        assert response.status == 503
        assert (await response.json())["error"]["type"] == "api_error"
    async with http.get(
        url(emulator, "anthropic", "/v1/models"), headers=headers("anthropic", "error:429")
    ) as response:
        assert response.status == 429
        assert response.headers["retry-after"] == "1"
    assert [r.scenario for r in emulator.requests] == ["error:503", "error:429"]


# --- Errors and admission, in each provider's own shape -------------------------------------------


async def test_malformed_json(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    bodies = {}
    for provider, path, _ in DOCUMENTS:
        async with http.post(
            url(emulator, provider, path), data=b"{not json", headers=headers(provider)
        ) as response:
            assert response.status == 400
            bodies[provider] = await response.json()
    assert bodies["openai"]["error"]["type"] == "invalid_request_error"
    assert set(bodies["openai"]["error"]) == {"message", "type", "param", "code"}
    assert bodies["anthropic"]["type"] == "error"
    assert bodies["anthropic"]["error"]["type"] == "invalid_request_error"
    assert bodies["gemini"]["error"]["status"] == "INVALID_ARGUMENT"
    assert bodies["gemini"]["error"]["code"] == 400


async def test_unknown_paths(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.post(url(emulator, "openai", "/v1/nope"), json={}, headers=headers("openai")) as response:
        assert response.status == 404
        assert (await response.json())["error"]["message"] == "Invalid URL (POST /v1/nope)"
    async with http.get(url(emulator, "anthropic", "/v1/nope"), headers=headers("anthropic")) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"
    async with http.post(
        url(emulator, "gemini", "/v1beta/models/x:nope"), json={}, headers=headers("gemini")
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["status"] == "NOT_FOUND"
    async with http.get(emulator.url + "/azure/v1/models") as response:
        assert response.status == 404
    assert len(emulator.requests) == 3  # unknown provider prefixes are not recorded


@pytest.mark.parametrize(("provider", "status"), [("openai", 401), ("anthropic", 401), ("gemini", 403)])
async def test_missing_key(
    emulator: Emulator, http: aiohttp.ClientSession, provider: str, status: int
) -> None:
    path = "/v1beta/models" if provider == "gemini" else "/v1/models"
    async with http.get(
        url(emulator, provider, path), headers={"anthropic-version": "2023-06-01"}
    ) as response:
        assert response.status == status


async def test_anthropic_requires_version_header(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.get(url(emulator, "anthropic", "/v1/models"), headers={"x-api-key": "k"}) as response:
        assert response.status == 400
        assert "anthropic-version" in (await response.json())["error"]["message"]


async def test_gemini_key_in_query_and_error_framing(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.get(url(emulator, "gemini", "/v1beta/models?key=from-query")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert emulator.requests[0].query == "key=from-query"
    async with http.get(url(emulator, "gemini", "/v1beta/models?key=emulator-reject")) as response:
        assert response.status == 400
        raw = await response.read()
    # Google pretty-prints its JSON, errors included.
    assert raw.startswith(b'{\n  "error": {\n    "code": 400,')
    assert json.loads(raw)["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_gemini_stream_without_sse_is_a_json_array(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    async with http.post(
        url(emulator, "gemini", path), json=GEMINI_PROMPT, headers=headers("gemini")
    ) as response:
        chunks = json.loads(await response.read())
    assert (
        "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
        == "Hello from the emulator."
    )
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


# --- Recording and determinism ------------------------------------------------------------------


async def test_identical_requests_get_identical_bytes(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    for provider, path, body in DOCUMENTS * 2:
        async with http.post(url(emulator, provider, path), json=body, headers=headers(provider)) as response:
            assert response.status == 200
    half = len(DOCUMENTS)
    for index in range(half):
        assert emulator.sent_bytes[index] == emulator.sent_bytes[index + half]
    other = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Something else."}]}
    async with http.post(
        url(emulator, "openai", "/v1/chat/completions"), json=other, headers=headers("openai")
    ):
        pass
    assert json.loads(emulator.last_response_body)["id"] != json.loads(emulator.sent_bytes[0])["id"]


async def test_stream_and_document_share_ids(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": PROMPT}
    for extra in ({}, {"stream": True}):
        async with http.post(
            url(emulator, "anthropic", "/v1/messages"), json={**body, **extra}, headers=headers("anthropic")
        ):
            pass
    message_id = json.loads(emulator.sent_bytes[0])["id"]
    assert f'"id":"{message_id}"'.encode() in emulator.sent_bytes[1]


async def test_recorded_request(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.post(
        url(emulator, "gemini", "/v1beta/models/gemini-2.5-flash:generateContent?foo=bar"),
        data=b'{"contents": []}',
        headers=headers("gemini", X_Custom="1"),
    ):
        pass
    request = emulator.requests[0]
    assert request.provider == "gemini" and request.method == "POST"
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.query == "foo=bar"
    assert request.body == b'{"contents": []}'
    assert request.headers["X-GOOG-API-KEY"] == "gemini-test"
    assert emulator.responses[0].status == 200 and emulator.responses[0].completed


# --- gzip ---------------------------------------------------------------------------------------


async def test_gzip_document(emulator: Emulator) -> None:
    provider, path, body = DOCUMENTS[0]
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.post(
            url(emulator, provider, path), json=body, headers=headers(provider, "gzip")
        ) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            raw = await response.read()
        assert gzip.decompress(raw) == emulator.sent_bytes[0]
        plain = headers(provider, "gzip", **{"Accept-Encoding": "identity"})
        async with http.post(url(emulator, provider, path), json=body, headers=plain) as response:
            assert "Content-Encoding" not in response.headers
            assert await response.read() == emulator.sent_bytes[1]


@pytest.mark.parametrize(("provider", "path", "body", "ending"), STREAMS)
async def test_gzip_stream_flushes_every_event(
    emulator: Emulator, provider: str, path: str, body: dict[str, Any], ending: bytes
) -> None:
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        scenario = headers(provider, "gzip,delay:80")
        async with http.post(url(emulator, provider, path), json=body, headers=scenario) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            first = decoder.decompress(await response.content.readany())
            # The first network chunk decodes to whole events while the rest is still 80 ms away.
            assert first.endswith((b"\n\n", b"\r\n\r\n")) and first.count(b"data: ") == 1
            rest = decoder.decompress(await response.read())
    assert first + rest + decoder.flush() == emulator.sent_bytes[0]
    assert (first + rest).endswith(ending)


# --- Timing -------------------------------------------------------------------------------------


async def test_slow_first_byte(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    async with http.get(
        url(emulator, "openai", "/v1/models"), headers=headers("openai", "slow-first-byte:0.3")
    ):
        assert time.monotonic() - started >= 0.3


async def test_delay_between_events(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    provider, path, body, _ = STREAMS[0]
    started = time.monotonic()
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, "delay:50")
    ) as response:
        raw = await response.read()
    events = raw.count(b"data: ")
    assert time.monotonic() - started >= (events - 1) * 0.05


@pytest.mark.parametrize(("provider", "path", "body", "ending"), STREAMS)
async def test_stall_then_client_disconnect_counts_cancel(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    provider: str,
    path: str,
    body: dict[str, Any],
    ending: bytes,
) -> None:
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, "stall-after:2")
    ) as response:
        received = b""
        while received.count(b"data: ") < 2:
            received += await response.content.readany()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(response.content.readany(), 0.2)
        response.close()  # the client gives up: the server must notice
    await emulator.wait_cancelled(1)
    assert not emulator.responses[0].completed
    assert STALL_SECONDS >= 60


async def test_disconnect_during_slow_first_byte_counts_cancel(emulator: Emulator) -> None:
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.get(
                url(emulator, "openai", "/v1/models"), headers=headers("openai", "slow-first-byte:5")
            )
    await emulator.wait_cancelled(1)
    assert emulator.responses[0].status == 0  # nothing was sent


async def test_stop_with_a_stalled_stream_is_quick(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    provider, path, body, _ = STREAMS[0]
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, "stall-after:1")
    ) as response:
        await response.content.readany()
        started = time.monotonic()
        await emulator.stop()
        assert time.monotonic() - started < 2
    assert emulator.cancelled == 0


# --- Large and broken responses -----------------------------------------------------------------


@pytest.mark.parametrize(("provider", "path", "body", "ending"), STREAMS)
async def test_large_stream(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    provider: str,
    path: str,
    body: dict[str, Any],
    ending: bytes,
) -> None:
    size = 20_000_000
    total, tail = 0, b""
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, f"large-stream:{size}")
    ) as response:
        async for chunk in response.content.iter_any():
            total += len(chunk)
            tail = (tail + chunk)[-4096:]
    assert total >= size
    assert tail.endswith(ending)
    assert emulator.responses[0].truncated and emulator.responses[0].completed
    assert 0 not in emulator.sent_bytes  # too large to keep whole


async def test_large_stream_250_megabytes_quickly_in_bounded_memory(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    provider, path, body, _ = STREAMS[0]
    size = 250_000_000
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, total = time.monotonic(), 0
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, f"large-stream:{size}")
    ) as response:
        async for chunk in response.content.iter_any():
            total += len(chunk)
    assert total >= size
    assert time.monotonic() - started < 30  # ~2-3 s here
    # Generated lazily: the process peak grows by far less than the stream's size.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib < 64 * 1024


@pytest.mark.parametrize(("provider", "path", "body"), DOCUMENTS)
async def test_large_body(
    emulator: Emulator, http: aiohttp.ClientSession, provider: str, path: str, body: dict[str, Any]
) -> None:
    size = 3_000_000
    async with http.post(
        url(emulator, provider, path), json=body, headers=headers(provider, f"large-body:{size}")
    ) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        raw = await response.read()
    assert len(raw) >= size
    document = json.loads(raw)
    assert raw == emulator.sent_bytes[0]
    assert "The quick brown fox" in json.dumps(document)[:5000]


@pytest.mark.parametrize(("provider", "path", "body", "ending"), STREAMS)
async def test_drop_mid_stream(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    provider: str,
    path: str,
    body: dict[str, Any],
    ending: bytes,
) -> None:
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            url(emulator, provider, path), json=body, headers=headers(provider, "drop-mid-stream:3")
        ) as response:
            async for chunk in response.content.iter_any():
                received += chunk
    assert received == emulator.sent_bytes[0]
    assert received.count(b"data: ") == 3
    assert not emulator.responses[0].completed and emulator.cancelled == 0


async def test_drop_mid_document(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    provider, path, body = DOCUMENTS[1]
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            url(emulator, provider, path), json=body, headers=headers(provider, "drop-mid-stream")
        ) as response:
            await response.read()
    recorded = emulator.responses[0]
    assert not recorded.completed
    assert 0 < len(recorded.body) < int(recorded.headers["Content-Length"])


async def test_concurrent_requests_get_distinct_indexes(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    provider, path, body = DOCUMENTS[0]

    async def one(n: int) -> str:
        request_body = {**body, "user": str(n)}
        async with http.post(
            url(emulator, provider, path), json=request_body, headers=headers(provider)
        ) as response:
            await response.read()
            return response.headers["x-request-id"]

    request_ids = await asyncio.gather(*(one(n) for n in range(20)))
    assert sorted(r.index for r in emulator.requests) == list(range(20))
    for recorded in emulator.requests:
        assert emulator.responses[recorded.index].headers["x-request-id"] in request_ids
        user = recorded.json()["user"]
        assert request_ids[int(user)] == f"req_{recorded.index:032x}"
