"""Every way an exchange can fail, through the official SDKs: the error each SDK raises, one audit row.

Each case checks that the client sees the failure in its provider's usual shape (so agents handle it
as they would against the real API), that exactly one audit row records it with the right
outcome/status/error_type, and that the provider key appears nowhere in that row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway.config import ProviderConfig
from tests.conftest import RunningGateway, gateway_config, start_gateway
from tests.emulator.server import Emulator

KEY = "sk-test-SECRET123"
PROVIDERS = ("openai", "anthropic", "gemini")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
FAST_TIMEOUTS = {"first_byte_s": 0.5, "idle_s": 0.5}
ROW_WAIT_S = 15.0

# Raw HTTP, for what the SDKs cannot send: a path per provider, and how each passes the key.
RAW_PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/gemini-2.5-flash:generateContent",
}
RAW_STREAM_PATHS = {**RAW_PATHS, "gemini": "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"}
RAW_STREAM_BODIES: dict[str, dict[str, Any]] = {
    "openai": {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    "anthropic": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "gemini": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
}


def raw_headers(provider: str, scenario: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if provider == "openai":
        headers["Authorization"] = f"Bearer {KEY}"
    elif provider == "anthropic":
        headers.update({"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    else:
        headers["x-goog-api-key"] = KEY
    if scenario:
        headers["x-emulator-scenario"] = scenario
    return headers


def scenario_headers(scenario: str | None) -> dict[str, str] | None:
    return {"x-emulator-scenario": scenario} if scenario else None


def openai_client(base: str, scenario: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base + "/v1", api_key=KEY, max_retries=0, default_headers=scenario_headers(scenario)
    )


def anthropic_client(base: str, scenario: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=base, api_key=KEY, max_retries=0, default_headers=scenario_headers(scenario)
    )


def gemini_client(base: str, scenario: str | None = None) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(base_url=base, headers=scenario_headers(scenario)),
    )


async def generate(provider: str, base: str, scenario: str | None = None) -> None:
    """One non-streamed generation with the provider's own SDK."""
    messages: Any = [{"role": "user", "content": "hi"}]
    if provider == "openai":
        await openai_client(base, scenario).chat.completions.create(model=MODELS[provider], messages=messages)
    elif provider == "anthropic":
        await anthropic_client(base, scenario).messages.create(
            model=MODELS[provider], max_tokens=100, messages=messages
        )
    else:
        await gemini_client(base, scenario).aio.models.generate_content(model=MODELS[provider], contents="hi")


async def stream(provider: str, base: str, scenario: str | None, received: list[Any]) -> None:
    """One streamed generation with the provider's own SDK, collecting what arrives into `received`."""
    messages: Any = [{"role": "user", "content": "hi"}]
    if provider == "openai":
        async for chunk in await openai_client(base, scenario).chat.completions.create(
            model=MODELS[provider], messages=messages, stream=True
        ):
            received.append(chunk)
    elif provider == "anthropic":
        async for event in await anthropic_client(base, scenario).messages.create(
            model=MODELS[provider], max_tokens=100, messages=messages, stream=True
        ):
            received.append(event)
    else:
        async for chunk in await gemini_client(base, scenario).aio.models.generate_content_stream(
            model=MODELS[provider], contents="hi"
        ):
            received.append(chunk)


# What each SDK raises when the gateway answers with a status (before any byte of a stream).
STATUS_ERRORS: dict[str, type[Exception]] = {
    "openai": openai.APIStatusError,
    "anthropic": anthropic.APIStatusError,
    "gemini": genai_errors.APIError,
}
# What each SDK raises when a stream ends with the provider's in-stream error event.
STREAM_ERRORS: dict[str, type[Exception]] = {
    "openai": openai.APIError,
    "anthropic": anthropic.APIError,
    "gemini": genai_errors.APIError,
}


def stream_error_kind(exc: BaseException) -> str:
    """The error type/code/status of a provider's in-stream error event, as each SDK exposes it."""
    if isinstance(exc, genai_errors.APIError):
        return str(exc.status)
    body: Any = getattr(exc, "body", None)
    if isinstance(exc, anthropic.APIError):
        return str(body["error"]["type"])
    return str(body["code"])


def status_of(exc: BaseException) -> int:
    """The HTTP status an SDK exception reports, in each SDK's own attribute."""
    if isinstance(exc, genai_errors.APIError):
        return int(exc.code)
    status: int = exc.status_code  # type: ignore[attr-defined]
    return status


def gateway_request_id(exc: BaseException) -> str | None:
    """x-gateway-request-id from the response an SDK exception carries, if it carries one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return None if headers is None else headers.get("x-gateway-request-id")


async def the_row(gw: RunningGateway, request_id: str | None = None) -> dict[str, Any]:
    """The one audit row of the test's one request (it may land just after the client saw the end)."""
    deadline = asyncio.get_running_loop().time() + ROW_WAIT_S
    rows = await gw.rows()
    while not rows:
        assert asyncio.get_running_loop().time() < deadline, "no audit row was written"
        await asyncio.sleep(0.05)
        rows = await gw.rows()
    assert len(rows) == 1, f"expected exactly one audit row, got {len(rows)}: {rows}"
    row = rows[0]
    if request_id is not None:
        assert row["request_id"] == request_id
    assert KEY not in json.dumps(row, default=str), "the provider key leaked into the audit row"
    return row


def free_closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- answered by the gateway itself ---------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("openai", openai.NotFoundError),
        ("anthropic", anthropic.NotFoundError),
        ("gemini", genai_errors.ClientError),
    ],
)
async def test_unknown_provider_is_404_in_the_sdk(
    gateway: RunningGateway, emulator: Emulator, provider: str, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught:
        await generate(provider, gateway.url("no-such-provider"))
    assert status_of(caught.value) == 404
    row = await the_row(gateway, gateway_request_id(caught.value))
    assert (row["outcome"], row["status"], row["error_type"]) == ("bad_request", 404, "not_found")
    assert "no-such-provider" in row["error_message"]
    assert emulator.requests == []


EXPECTED_400_SHAPES: dict[str, Callable[[Any], bool]] = {
    "openai": lambda b: (
        set(b["error"]) == {"message", "type", "param", "code"}
        and b["error"]["type"] == "invalid_request_error"
    ),
    "anthropic": lambda b: b["type"] == "error" and b["error"]["type"] == "invalid_request_error",
    "gemini": lambda b: b["error"]["code"] == 400 and b["error"]["status"] == "INVALID_ARGUMENT",
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_json_is_400_in_the_provider_shape(
    gateway: RunningGateway, emulator: Emulator, provider: str
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.url(provider) + RAW_PATHS[provider],
            data=b'{"model": "x", "messages": [',
            headers=raw_headers(provider),
        ) as r:
            assert r.status == 400
            assert r.content_type == "application/json"
            body = await r.json()
            request_id = r.headers["x-gateway-request-id"]
    assert EXPECTED_400_SHAPES[provider](body), body
    row = await the_row(gateway, request_id)
    assert (row["outcome"], row["status"], row["error_type"]) == ("bad_request", 400, "invalid_request")
    assert row["provider"] == provider
    assert emulator.requests == []


EXPECTED_413_SHAPES: dict[str, Callable[[Any], bool]] = {
    "openai": lambda b: b["error"]["code"] == "request_too_large",
    "anthropic": lambda b: b["type"] == "error" and b["error"]["type"] == "request_too_large",
    "gemini": lambda b: b["error"]["code"] == 413 and b["error"]["status"] == "INVALID_ARGUMENT",
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_body_over_the_limit_is_413_and_the_connection_is_closed(
    make_gateway: Callable[..., Any], emulator: Emulator, provider: str
) -> None:
    gw: RunningGateway = await make_gateway(server={"max_body_bytes": 1000})
    prompt = "x" * 5000
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
    # Declared length over the limit, and only part of the body sent: the gateway must answer at
    # once, without waiting for the rest, and must not keep the connection for another request.
    host, port = gw.server.host, gw.server.port
    path = f"/{provider}{RAW_PATHS[provider]}"
    head = "".join(f"{k}: {v}\r\n" for k, v in raw_headers(provider).items())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request_head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(request_head.encode() + body[:200])
        await writer.drain()
        async with asyncio.timeout(10):
            head_blob = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head_blob.decode().strip().split("\r\n")
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
            payload = await reader.readexactly(int(headers["content-length"]))
        assert status_line.startswith("HTTP/1.1 413"), head_blob
        assert headers["connection"] == "close"
        # aiohttp drains (lingers on) the unread body before closing; once it has it all, EOF.
        writer.write(body[200:])
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""
    finally:
        writer.close()
    assert EXPECTED_413_SHAPES[provider](json.loads(payload)), payload
    row = await the_row(gw, headers["x-gateway-request-id"])
    assert (row["outcome"], row["status"], row["error_type"]) == ("bad_request", 413, "request_too_large")

    # A chunked body (no declared length) is cut off at the limit too, without reading all of it.
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 500

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.post(
            gw.url(provider) + RAW_PATHS[provider], data=chunks(), headers=raw_headers(provider)
        ) as r:
            assert r.status == 413
            assert EXPECTED_413_SHAPES[provider](await r.json())
    rows = await gw.rows()
    assert len(rows) == 2 and rows[1]["status"] == 413 and KEY not in json.dumps(rows, default=str)
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("openai", openai.InternalServerError),
        ("anthropic", anthropic.InternalServerError),
        ("gemini", genai_errors.ServerError),
    ],
)
async def test_unreachable_upstream_is_502(
    tmp_path: Path, emulator: Emulator, provider: str, expected: type[Exception]
) -> None:
    dead = f"http://127.0.0.1:{free_closed_port()}"
    config = gateway_config(tmp_path, emulator)
    config = dataclasses.replace(
        config, providers={name: ProviderConfig(name, name, f"{dead}/{name}") for name in PROVIDERS}
    )
    gw = await start_gateway(config)
    try:
        with pytest.raises(expected) as caught:
            await generate(provider, gw.url(provider))
        assert status_of(caught.value) == 502
        row = await the_row(gw, gateway_request_id(caught.value))
        assert (row["outcome"], row["status"]) == ("upstream_unreachable", 502)
        assert row["error_type"] == "upstream_unreachable"
        assert row["provider"] == provider and row["ttfb_ms"] is None
    finally:
        await gw.server.close()


# -- upstream too slow ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("openai", openai.InternalServerError),
        ("anthropic", anthropic.InternalServerError),
        ("gemini", genai_errors.ServerError),
    ],
)
async def test_no_first_byte_in_time_is_504_and_the_upstream_call_is_cancelled(
    make_gateway: Callable[..., Any], emulator: Emulator, provider: str, expected: type[Exception]
) -> None:
    gw: RunningGateway = await make_gateway(timeouts=FAST_TIMEOUTS)
    with pytest.raises(expected) as caught:
        await generate(provider, gw.url(provider), "slow-first-byte:5")
    assert status_of(caught.value) == 504
    row = await the_row(gw, gateway_request_id(caught.value))
    assert (row["outcome"], row["status"], row["error_type"]) == ("timeout", 504, "upstream_timeout")
    assert row["duration_ms"] < 4500  # answered at the first-byte timeout, not when upstream woke up
    await emulator.wait_cancelled(1, within=10)


@pytest.mark.parametrize(
    ("provider", "kind"),
    [("openai", "upstream_timeout"), ("anthropic", "timeout_error"), ("gemini", "DEADLINE_EXCEEDED")],
)
async def test_upstream_idle_mid_stream_ends_with_the_providers_error_event(
    make_gateway: Callable[..., Any], emulator: Emulator, provider: str, kind: str
) -> None:
    gw: RunningGateway = await make_gateway(timeouts=FAST_TIMEOUTS)
    received: list[Any] = []
    with pytest.raises(STREAM_ERRORS[provider]) as caught:
        await stream(provider, gw.url(provider), "stall-after:2", received)
    assert received, "the events before the stall reached the client"
    assert stream_error_kind(caught.value) == kind
    if provider == "gemini":
        assert status_of(caught.value) == 504
    row = await the_row(gw)
    assert (row["outcome"], row["error_type"]) == ("timeout", "idle_timeout")
    assert row["status"] == 200  # what the client saw: the stream had begun
    assert row["stream"] is True and row["response_bytes"] > 0
    await emulator.wait_cancelled(1, within=10)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("scenario", "status", "outcome", "error_type"),
    [
        ("stall-after:2", 504, "timeout", "upstream_timeout"),
        ("drop-mid-stream", 502, "upstream_unreachable", "upstream_unreachable"),
    ],
)
async def test_small_body_cut_off_before_the_gateway_answered_is_a_clean_5xx(
    make_gateway: Callable[..., Any],
    provider: str,
    scenario: str,
    status: int,
    outcome: str,
    error_type: str,
) -> None:
    # Small complete bodies are read whole before anything goes to the client, so a stall or a
    # drop inside one can still be answered with a provider-shaped status.
    gw: RunningGateway = await make_gateway(timeouts=FAST_TIMEOUTS)
    with pytest.raises(STATUS_ERRORS[provider]) as caught:
        await generate(provider, gw.url(provider), scenario)
    assert status_of(caught.value) == status
    row = await the_row(gw, gateway_request_id(caught.value))
    assert (row["outcome"], row["status"], row["error_type"]) == (outcome, status, error_type)


# What each SDK raises when a response body is cut off (the connection ends before the body does).
TRUNCATED_BODY_ERRORS: dict[str, type[Exception]] = {
    "openai": openai.APIConnectionError,
    "anthropic": anthropic.APIConnectionError,
    "gemini": aiohttp.ClientPayloadError,  # google-genai's aiohttp transport does not wrap it
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("scenario", "outcome", "error_type"),
    [
        ("large-body:1000000,stall-after:6", "timeout", "idle_timeout"),  # past the 256 KiB collected
        ("large-body:1000000,drop-mid-stream:6", "upstream_unreachable", "upstream_disconnected"),
    ],
)
async def test_large_body_cut_off_mid_relay_is_cut_off_for_the_client_too(
    make_gateway: Callable[..., Any], provider: str, scenario: str, outcome: str, error_type: str
) -> None:
    # The headers (200) are out already; the client must see a broken transfer, never a
    # truncated body that ends like a complete one (the SDK would then fail parsing JSON).
    gw: RunningGateway = await make_gateway(timeouts=FAST_TIMEOUTS)
    with pytest.raises(TRUNCATED_BODY_ERRORS[provider]):
        await generate(provider, gw.url(provider), scenario)
    row = await the_row(gw)
    assert (row["outcome"], row["status"], row["error_type"]) == (outcome, 200, error_type)
    assert 0 < row["response_bytes"] < 1_000_000 and row["stream"] is False


# -- upstream errors and breakage -----------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "scenario", "expected", "status", "error_type"),
    [
        ("openai", "error:429", openai.RateLimitError, 429, "requests"),
        ("anthropic", "error:429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("anthropic", "error:529", anthropic.OverloadedError, 529, "overloaded_error"),
        ("gemini", "error:429", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("gemini", "error:503", genai_errors.ServerError, 503, "UNAVAILABLE"),
    ],
)
async def test_upstream_error_passes_through_unchanged(
    gateway: RunningGateway,
    emulator: Emulator,
    provider: str,
    scenario: str,
    expected: type[Exception],
    status: int,
    error_type: str,
) -> None:
    with pytest.raises(expected) as caught:
        await generate(provider, gateway.url(provider), scenario)
    assert status_of(caught.value) == status
    assert len(emulator.requests) == 1  # no retries behind the client's back
    upstream_body = emulator.responses[0].body
    row = await the_row(gateway, gateway_request_id(caught.value))
    assert (row["outcome"], row["status"], row["error_type"]) == ("upstream_error", status, error_type)
    assert row["response_bytes"] == len(upstream_body)


@pytest.mark.parametrize(
    ("provider", "kind"),
    [("openai", "upstream_unreachable"), ("anthropic", "api_error"), ("gemini", "UNAVAILABLE")],
)
async def test_upstream_dropping_mid_stream_ends_with_the_providers_error_event(
    gateway: RunningGateway, provider: str, kind: str
) -> None:
    received: list[Any] = []
    with pytest.raises(STREAM_ERRORS[provider]) as caught:
        await stream(provider, gateway.url(provider), "drop-mid-stream", received)
    assert received, "the events before the drop reached the client"
    assert stream_error_kind(caught.value) == kind
    if provider == "gemini":
        assert status_of(caught.value) == 502
    row = await the_row(gateway)
    assert (row["outcome"], row["error_type"]) == ("upstream_unreachable", "upstream_disconnected")
    assert row["status"] == 200 and row["stream"] is True and row["response_bytes"] > 0


# -- the client goes away -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_client_disconnect_mid_stream_cancels_the_upstream_call(
    gateway: RunningGateway, emulator: Emulator, provider: str
) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            gateway.url(provider) + RAW_STREAM_PATHS[provider],
            json=RAW_STREAM_BODIES[provider],
            headers=raw_headers(provider, "delay:200"),
        )
        assert r.status == 200
        request_id = r.headers["x-gateway-request-id"]
        first = await r.content.readany()
        assert first
        r.close()  # drops the connection mid-stream
    await emulator.wait_cancelled(1, within=10)
    row = await the_row(gateway, request_id)
    assert (row["outcome"], row["error_type"]) == ("client_disconnected", "client_disconnected")
    assert row["response_bytes"] > 0
    assert emulator.responses[0].completed is False
