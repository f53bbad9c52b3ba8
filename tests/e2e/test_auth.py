"""Gateway keys with the official SDKs: who may call, which key goes upstream, what never leaks."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google.genai import errors as genai_errors

from tests.auth_setup import (
    ADMIN_TOKEN,
    ALICE,
    EXPIRED,
    PROVIDER_KEYS,
    all_secrets,
    anthropic_client,
    auth_sections,
    gemini_client,
    openai_client,
)
from tests.conftest import RunningGateway
from tests.emulator.server import Emulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gw(make_gateway: Any) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(**auth_sections())
    return gateway


def upstream_credentials(emulator: Emulator) -> list[str]:
    """Every credential-bearing header value and query string the upstream received."""
    seen = []
    for request in emulator.requests:
        for name in ("Authorization", "x-api-key", "x-goog-api-key", "api-key"):
            seen.extend(request.headers.getall(name, []))
        seen.append(request.query)
    return seen


# --- a gateway key works wherever each SDK puts its API key; the provider's key goes upstream ---


async def test_openai_sdk_with_a_gateway_key(gw: RunningGateway, emulator: Emulator) -> None:
    raw = await openai_client(gw, ALICE).chat.completions.with_raw_response.create(**CHAT)
    assert raw.parse().choices[0].message.content
    (request,) = emulator.requests
    assert request.headers["Authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    assert not any(ALICE in v for v in upstream_credentials(emulator))
    row = await gw.row(raw.headers["x-gateway-request-id"])
    assert (row["key_id"], row["user"], row["team"], row["outcome"]) == ("alice-laptop", "alice", "ml", "ok")


@pytest.mark.parametrize("credential", ["api_key", "auth_token"])
async def test_anthropic_sdk_with_a_gateway_key_as_api_key_or_auth_token(
    gw: RunningGateway, emulator: Emulator, credential: str
) -> None:
    message = await anthropic_client(gw, **{credential: ALICE}).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text
    (request,) = emulator.requests
    assert request.headers["x-api-key"] == PROVIDER_KEYS["anthropic"]
    assert "Authorization" not in request.headers  # ANTHROPIC_AUTH_TOKEN's header is stripped
    assert request.headers["anthropic-version"]  # provider headers still pass through


async def test_gemini_sdk_with_a_gateway_key(gw: RunningGateway, emulator: Emulator) -> None:
    response = await gemini_client(gw, ALICE).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )
    assert response.text
    (request,) = emulator.requests
    assert request.headers["x-goog-api-key"] == PROVIDER_KEYS["gemini"]
    (row,) = await gw.rows()
    assert row["key_id"] == "alice-laptop" and row["outcome"] == "ok"


async def test_gemini_query_key_is_replaced_and_other_parameters_kept(
    gw: RunningGateway, emulator: Emulator
) -> None:
    url = gw.url("gemini") + f"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={ALICE}"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200 and b"data: " in await response.read()
    (request,) = emulator.requests
    assert request.query == "alt=sse"
    assert request.headers["x-goog-api-key"] == PROVIDER_KEYS["gemini"]


async def test_custom_provider_gets_its_own_key(gw: RunningGateway, emulator: Emulator) -> None:
    client = openai.AsyncOpenAI(base_url=gw.url("vllm") + "/v1", api_key=ALICE, max_retries=0)
    await client.chat.completions.create(**CHAT)
    assert emulator.requests[-1].headers["Authorization"] == f"Bearer {PROVIDER_KEYS['vllm']}"


async def test_a_provider_can_name_its_own_credential_header(make_gateway: Any, emulator: Emulator) -> None:
    """Azure OpenAI takes `api-key: …` rather than a bearer token."""
    gw: RunningGateway = await make_gateway(
        **auth_sections(provider_options={"vllm": {"auth_header": "api-key"}})
    )
    client = openai.AsyncOpenAI(base_url=gw.url("vllm") + "/v1", api_key=ALICE, max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # the emulator is api.openai.com: it wants a bearer
        await client.chat.completions.create(**CHAT)
    (request,) = emulator.requests
    assert request.headers["api-key"] == PROVIDER_KEYS["vllm"]
    assert "Authorization" not in request.headers


# --- unknown, expired, revoked and missing keys: provider-shaped 401, audited, never forwarded ---

BAD_KEYS = {
    "unknown": "lgw_thisKeyWasNeverIssued000000000000000000000",
    "expired": EXPIRED,
    "provider key": "sk-proj-callers-own-provider-key",  # passthrough is off when keys are required
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
async def test_bad_keys_get_each_sdks_authentication_error(
    gw: RunningGateway, emulator: Emulator, case: str
) -> None:
    key = BAD_KEYS[case]
    with pytest.raises(openai.AuthenticationError) as oa:
        await openai_client(gw, key).chat.completions.create(**CHAT)
    with pytest.raises(anthropic.AuthenticationError) as an:
        await anthropic_client(gw, api_key=key).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(genai_errors.ClientError) as ge:
        await gemini_client(gw, key).aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ge.value.code == 401 and ge.value.status == "UNAUTHENTICATED"
    assert an.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert key not in str(oa.value) + str(an.value) + str(ge.value)
    if case == "expired":
        assert "has expired" in str(oa.value)
    assert emulator.requests == []  # nothing reached the upstream
    rows = await gw.rows()
    assert len(rows) == 3
    assert {(r["status"], r["outcome"], r["rejection_rule"]) for r in rows} == {(401, "rejected", "auth.key")}
    assert all(key not in str(r) for r in rows)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_no_key_at_all_is_a_401_in_the_providers_shape(
    gw: RunningGateway, emulator: Emulator, provider: str
) -> None:
    path = {
        "openai": "/v1/chat/completions",
        "anthropic": "/v1/messages",
        "gemini": "/v1beta/models/gemini-2.5-flash:generateContent",
    }[provider]
    async with aiohttp.ClientSession() as session, session.post(gw.url(provider) + path, json={}) as r:
        body = await r.json()
        assert r.status == 401
    assert "missing gateway key" in str(body)
    assert emulator.requests == []
    (row,) = await gw.rows()
    assert row["outcome"] == "rejected" and row["status"] == 401


async def test_revoked_and_rotated_keys(gw: RunningGateway, emulator: Emulator) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base = str(gw.server.make_url("/admin/keys"))
    async with aiohttp.ClientSession(headers=admin) as session:
        async with session.post(base, json={"team": "ml", "name": "ci"}) as r:
            assert r.status == 201 and r.headers["Cache-Control"] == "no-store"
            created = await r.json()
        key_id, first = created["key"]["id"], created["secret"]
        await openai_client(gw, first).chat.completions.create(**CHAT)
        async with session.post(f"{base}/{key_id}/rotate", json={"grace": "1h"}) as r:
            second = (await r.json())["secret"]
        await openai_client(gw, first).chat.completions.create(**CHAT)  # in its grace period
        await openai_client(gw, second).chat.completions.create(**CHAT)
        async with session.post(f"{base}/{key_id}/rotate") as r:  # no grace: the previous one dies now
            third = (await r.json())["secret"]
        for old in (first, second):
            with pytest.raises(openai.AuthenticationError):
                await openai_client(gw, old).chat.completions.create(**CHAT)
        await openai_client(gw, third).chat.completions.create(**CHAT)
        async with session.delete(f"{base}/{key_id}") as r:
            assert (await r.json())["key"]["revoked_at"]
    with pytest.raises(openai.AuthenticationError, match="has been revoked"):
        await openai_client(gw, third).chat.completions.create(**CHAT)
    rows = await gw.rows()
    assert [r["status"] for r in rows] == [200, 200, 200, 401, 401, 200, 401]
    assert {r["key_id"] for r in rows if r["status"] == 200} == {key_id}


# --- the provider key never reaches the client, the audit store or a log line ---


async def test_no_secret_in_responses_audit_rows_logs_or_metrics(
    make_gateway: Any, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # The upstream rejects this provider key, so its error (status, body) flows back through the gateway.
    sections = auth_sections(provider_keys={**PROVIDER_KEYS, "anthropic": "emulator-reject"})
    gw: RunningGateway = await make_gateway(**sections)
    seen: list[str] = []
    raw = await openai_client(gw, ALICE).chat.completions.with_raw_response.create(**CHAT)
    seen += [str(raw.headers), raw.text if isinstance(raw.text, str) else ""]
    stream = await openai_client(gw, ALICE).chat.completions.create(**CHAT, stream=True)
    seen += [c.model_dump_json() async for c in stream]
    with pytest.raises(anthropic.AuthenticationError) as upstream_401:
        await anthropic_client(gw, api_key=ALICE).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    seen.append(str(upstream_401.value.body) + str(upstream_401.value.response.headers))
    with pytest.raises(openai.AuthenticationError) as rejected:
        await openai_client(gw, "lgw_wrong").chat.completions.create(**CHAT)
    seen.append(str(rejected.value.body))
    async with aiohttp.ClientSession() as session:
        async with session.get(str(gw.server.make_url("/metrics"))) as r:
            seen.append(await r.text())
        async with session.get(str(gw.server.make_url("/readyz"))) as r:
            seen.append(await r.text())
    rows = await gw.rows()
    assert len(rows) == 4
    seen += [str(row) for row in rows]
    seen += [record.getMessage() for record in caplog.records]
    everything = "\n".join(seen)
    for secret in [*all_secrets(), "emulator-reject"]:
        assert secret not in everything, "a secret leaked"


async def test_timing_safe_comparisons(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    import gateway.auth.keys as keys

    compared: list[int] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        return original(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    await openai_client(gw, ALICE).chat.completions.create(**CHAT)
    assert compared, "the gateway key was not compared in constant time"
    compared.clear()
    async with aiohttp.ClientSession() as session:
        url = str(gw.server.make_url("/admin/keys"))
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
    assert compared, "the admin token was not compared in constant time"


async def test_passthrough_of_the_callers_own_key_when_allowed(make_gateway: Any, emulator: Emulator) -> None:
    gw: RunningGateway = await make_gateway(**auth_sections(auth={"required": False, "passthrough": "allow"}))
    await openai_client(gw, "sk-callers-own-key").chat.completions.create(**CHAT)
    await openai_client(gw, ALICE).chat.completions.create(**CHAT)
    own, substituted = emulator.requests
    assert own.headers["Authorization"] == "Bearer sk-callers-own-key"
    assert substituted.headers["Authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    rows = await gw.rows()
    assert [r["key_id"] for r in rows] == ["", "alice-laptop"]


async def test_a_gateway_key_without_a_provider_credential_is_a_clear_503(
    make_gateway: Any, emulator: Emulator
) -> None:
    gw: RunningGateway = await make_gateway(**auth_sections(provider_keys={}))
    with pytest.raises(openai.InternalServerError, match="no credential configured for provider 'openai'"):
        await openai_client(gw, ALICE).chat.completions.create(**CHAT)
    assert emulator.requests == []
    (row,) = await gw.rows()
    assert row["status"] == 503 and row["key_id"] == "alice-laptop"
