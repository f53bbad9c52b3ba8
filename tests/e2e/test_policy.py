"""The policy engine through the official SDKs: allowlists, denials, token caps, streaming, sources."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from tests.auth_setup import (
    ALICE,
    EMBEDDER,
    LOCAL,
    OFFICE,
    SUPPORT,
    anthropic_client,
    auth_sections,
    gemini_client,
    openai_client,
)
from tests.conftest import RunningGateway
from tests.emulator.server import Emulator

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gw(make_gateway: Any) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(**auth_sections())
    return gateway


async def denied_rows(gw: RunningGateway) -> list[tuple[int, str, str]]:
    return [(r["status"], r["outcome"], r["rejection_rule"]) for r in await gw.rows() if r["status"] == 403]


async def test_team_model_allowlist(gw: RunningGateway, emulator: Emulator) -> None:
    await anthropic_client(gw, api_key=SUPPORT).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=100, messages=HI
    )
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await anthropic_client(gw, api_key=SUPPORT).messages.create(
            model="claude-opus-4-1", max_tokens=100, messages=HI
        )
    message = str(denied.value)
    assert "model 'claude-opus-4-1' is not allowed for team 'support'" in message
    assert "rule policy.team.models" in message
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert len(emulator.requests) == 1
    assert await denied_rows(gw) == [(403, "rejected", "policy.team.models")]


async def test_a_global_deny_wins_over_a_more_specific_allow(gw: RunningGateway, emulator: Emulator) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=r"rule policy\.global\.models\.deny"):
        await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-deprecated-0301", messages=HI)
    assert emulator.requests == []


async def test_endpoint_allowlist_on_a_key(gw: RunningGateway, emulator: Emulator) -> None:
    embedding = await openai_client(gw, EMBEDDER).embeddings.create(
        model="text-embedding-3-small", input="hi"
    )
    assert embedding.data[0].embedding
    with pytest.raises(
        openai.PermissionDeniedError, match=r"endpoint 'chat\.completions' is not allowed for key"
    ):
        await openai_client(gw, EMBEDDER).chat.completions.create(model="gpt-4o-mini", messages=HI)
    gemini = gemini_client(gw, EMBEDDER)
    await gemini.aio.models.embed_content(model="text-embedding-004", contents="hi")
    with pytest.raises(genai_errors.ClientError) as denied:
        await gemini.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert denied.value.code == 403 and denied.value.status == "PERMISSION_DENIED"
    assert await denied_rows(gw) == [(403, "rejected", "policy.key.endpoints")] * 2
    assert len(emulator.requests) == 2


async def test_streaming_not_allowed_for_a_team(gw: RunningGateway, emulator: Emulator) -> None:
    with pytest.raises(anthropic.PermissionDeniedError, match="streaming is not allowed for team 'support'"):
        async with anthropic_client(gw, api_key=SUPPORT).messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=100, messages=HI
        ) as stream:
            await stream.get_final_message()
    assert emulator.requests == []
    assert await denied_rows(gw) == [(403, "rejected", "policy.team.streaming")]


async def test_max_tokens_clamped_or_inserted(gw: RunningGateway, emulator: Emulator) -> None:
    # team support: max_output_tokens 512 with clamp
    await anthropic_client(gw, api_key=SUPPORT).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=4000, messages=HI
    )
    await anthropic_client(gw, api_key=SUPPORT).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=100, messages=HI
    )
    clamped, untouched = emulator.requests
    assert clamped.json()["max_tokens"] == 512
    assert clamped.json()["messages"] == HI  # the rest of the body as sent
    assert untouched.json()["max_tokens"] == 100


async def test_max_tokens_rejected(make_gateway: Any, emulator: Emulator) -> None:
    gw: RunningGateway = await make_gateway(**auth_sections(policy={"max_output_tokens": 1000}))
    await openai_client(gw, ALICE).chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_completion_tokens=1000
    )
    with pytest.raises(
        openai.PermissionDeniedError, match="max_completion_tokens=1001 is over the limit of 1000"
    ):
        await openai_client(gw, ALICE).chat.completions.create(
            model="gpt-4o-mini", messages=HI, max_completion_tokens=1001
        )
    with pytest.raises(openai.PermissionDeniedError, match="max_output_tokens=5000"):
        await openai_client(gw, ALICE).responses.create(
            model="gpt-4o-mini", input="hi", max_output_tokens=5000
        )
    gemini = gemini_client(gw, ALICE)
    with pytest.raises(genai_errors.ClientError, match="maxOutputTokens=2048"):
        await gemini.aio.models.generate_content(
            model="gemini-2.5-flash",
            contents="hi",
            config=types.GenerateContentConfig(max_output_tokens=2048),
        )
    # A request without a cap gets the limit instead of the model's own maximum.
    await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    first, uncapped = emulator.requests
    assert first.json()["max_completion_tokens"] == 1000
    assert uncapped.json()["max_completion_tokens"] == 1000
    assert await denied_rows(gw) == [(403, "rejected", "policy.global.max_output_tokens")] * 3


async def test_source_address_allowlist(gw: RunningGateway, emulator: Emulator) -> None:
    await openai_client(gw, LOCAL).chat.completions.create(model="gpt-4o-mini", messages=HI)
    with pytest.raises(
        openai.PermissionDeniedError, match=r"source address 127\.0\.0\.1 is not allowed for key 'office'"
    ):
        await openai_client(gw, OFFICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(emulator.requests) == 1
    assert await denied_rows(gw) == [(403, "rejected", "policy.key.source_addresses")]


async def test_provider_allowlist(make_gateway: Any, emulator: Emulator) -> None:
    gw: RunningGateway = await make_gateway(
        **auth_sections(policy={"providers": {"allow": ["anthropic", "gemini"]}})
    )
    with pytest.raises(
        openai.PermissionDeniedError, match="provider 'openai' is not allowed for this gateway"
    ):
        await openai_client(gw, ALICE).chat.completions.create(model="gpt-4o-mini", messages=HI)
    await anthropic_client(gw, api_key=ALICE).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=HI
    )
    assert [r.provider for r in emulator.requests] == ["anthropic"]
