"""The admin API: bearer admin token, key life cycle, teams and users; never reachable via a provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.auth_setup import ADMIN_TOKEN, ALICE, auth_sections
from tests.conftest import RunningGateway
from tests.emulator.server import Emulator

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def gw(make_gateway: Any) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(**auth_sections())
    return gateway


async def call(
    gw: RunningGateway, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        url = str(gw.server.make_url(path))
        async with session.request(method, url, headers=ADMIN if headers is None else headers, **kwargs) as r:
            return r.status, await r.json()


async def test_refused_without_or_with_a_wrong_token(gw: RunningGateway) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": ADMIN_TOKEN},
        {"x-api-key": ADMIN_TOKEN},
    ):
        status, body = await call(gw, "GET", "/admin/keys", headers)
        assert status == 401 and "admin token" in body["error"]["message"]
    # A gateway key is not an admin token either.
    status, _ = await call(gw, "GET", "/admin/keys", {"Authorization": f"Bearer {ALICE}"})
    assert status == 401


async def test_disabled_without_an_admin_token(make_gateway: Any) -> None:
    gw: RunningGateway = await make_gateway(**auth_sections(auth={"required": True}))
    status, body = await call(gw, "GET", "/admin/keys")
    assert status == 404 and "disabled" in body["error"]["message"]


async def test_not_reachable_through_provider_routes(gw: RunningGateway, emulator: Emulator) -> None:
    # Under a provider prefix the path belongs to the provider; the admin token is no API key
    # there and never goes upstream.
    for path in ("/openai/admin/keys", "/anthropic/admin/keys", "/llm-gateway/openai/admin/keys"):
        status, body = await call(gw, "GET", path)
        assert status == 401 and "admin token is not an API key" in json.dumps(body)
    status, body = await call(gw, "GET", "/llm-gateway/admin/keys")
    assert status == 404 and "unknown provider 'admin'" in json.dumps(body)
    assert emulator.requests == []


async def test_key_life_cycle(gw: RunningGateway, tmp_path: Path) -> None:
    status, created = await call(
        gw,
        "POST",
        "/admin/keys",
        json={
            "user": "alice",
            "name": "ci",
            "tags": ["ci"],
            "expires_in": "30d",
            "policy": {"streaming": False},
        },
    )
    assert status == 201
    key, secret = created["key"], created["secret"]
    assert secret.startswith("lgw_") and key["team"] == "ml" and key["user"] == "alice"
    assert key["expires_at"] and key["policy"] == {"streaming": False} and key["source"] == "store"
    # The secret is shown once: never by list or show, and not stored.
    _, listed = await call(gw, "GET", "/admin/keys")
    _, shown = await call(gw, "GET", f"/admin/keys/{key['id']}")
    assert secret not in json.dumps(listed) + json.dumps(shown)
    assert key["id"] in {k["id"] for k in listed["keys"]} and shown["key"]["name"] == "ci"
    stored = (tmp_path / "state" / "keys.json").read_text()
    assert secret not in stored and key["id"] in stored
    assert (tmp_path / "state" / "keys.json").stat().st_mode & 0o077 == 0
    # The new key works at once, with its own policy.
    client = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=secret, max_retries=0)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError, match=r"policy\.key\.streaming"):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    status, rotated = await call(gw, "POST", f"/admin/keys/{key['id']}/rotate", json={"grace": 60})
    assert status == 200 and rotated["secret"] != secret and rotated["key"]["id"] == key["id"]
    assert rotated["key"]["rotated_grace_until"]
    status, revoked = await call(gw, "POST", f"/admin/keys/{key['id']}/revoke")
    assert status == 200 and revoked["key"]["revoked_at"]
    _, active = await call(gw, "GET", "/admin/keys?include_revoked=false&team=ml")
    assert key["id"] not in {k["id"] for k in active["keys"]}
    status, body = await call(gw, "POST", f"/admin/keys/{key['id']}/rotate")
    assert status == 409 and "revoked" in body["error"]["message"]


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        ({"team": "nope"}, 400, "unknown team 'nope'"),
        ({"team": "support", "user": "alice"}, 400, "belongs to team 'ml'"),
        ({"team": "ml", "secret_hash": "sha256:" + "0" * 64}, 400, "unknown field"),
        ({"team": "ml", "expires_at": "2001-01-01T00:00:00Z"}, 400, "in the past"),
        ({"team": "ml", "id": "alice-laptop"}, 409, "exists already"),
        ({"team": "ml", "policy": {"max_tokens_action": "shrug"}}, 400, "reject or clamp"),
        ({"team": "ml", "id": "bad id!"}, 400, "[A-Za-z0-9_.-]"),
    ],
)
async def test_create_refuses_bad_requests(
    gw: RunningGateway, spec: dict[str, Any], status: int, message: str
) -> None:
    got, body = await call(gw, "POST", "/admin/keys", json=spec)
    assert got == status and message in body["error"]["message"]


async def test_config_keys_are_managed_in_the_config(gw: RunningGateway) -> None:
    status, body = await call(gw, "POST", "/admin/keys/alice-laptop/revoke")
    assert status == 409 and "declared in the config" in body["error"]["message"]
    status, body = await call(gw, "GET", "/admin/keys/nope")
    assert status == 404


async def test_teams_and_users(gw: RunningGateway) -> None:
    _, teams = await call(gw, "GET", "/admin/teams")
    by_name = {t["name"]: t for t in teams["teams"]}
    assert set(by_name) == {"ml", "support"}
    assert by_name["support"]["policy"]["models"] == {"allow": ["claude-*-haiku*"]}
    assert by_name["ml"]["keys"] == 5 and by_name["support"]["keys"] == 1
    _, users = await call(gw, "GET", "/admin/users")
    assert users["users"] == [{"name": "alice", "team": "ml", "email": "alice@example.com", "policy": {}}]
    status, _ = await call(gw, "GET", "/admin/whatever")
    assert status == 404
