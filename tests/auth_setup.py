"""A gateway config with teams, users, gateway keys and provider keys, shared by the auth tests."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types

from gateway.auth.keys import hash_secret, new_secret
from tests.conftest import RunningGateway

# Server-side provider keys: the only credentials the emulator should ever see.
PROVIDER_KEYS = {
    "openai": "sk-server-openai-PROVIDERSECRET-0001",
    "anthropic": "sk-ant-server-PROVIDERSECRET-0002",
    "gemini": "AIzaServerGeminiPROVIDERSECRET0003",
    "vllm": "vllm-server-PROVIDERSECRET-0004",
}
ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"

# Gateway-key secrets, one per configured key (only their hashes go into the config).
ALICE = new_secret()  # team ml, user alice: gpt-4o*, claude-*, gemini-* models
SUPPORT = new_secret()  # team support: claude-*-haiku* only, no streaming
EMBEDDER = new_secret()  # team ml: embeddings endpoints only
EXPIRED = new_secret()  # team ml, expired in 2020
OFFICE = new_secret()  # team ml, only from 10.0.0.0/8
LOCAL = new_secret()  # team ml, only from loopback


def auth_sections(**overrides: Any) -> dict[str, Any]:
    """`make_gateway(**auth_sections())`: keys required, two teams, provider keys configured."""
    sections: dict[str, Any] = {
        "auth": {"required": True, "admin_token": ADMIN_TOKEN},
        "policy": {"models": {"deny": ["*-deprecated*"]}},
        "teams": {
            "ml": {
                "description": "machine learning",
                "policy": {"models": {"allow": ["gpt-4o*", "claude-*", "gemini-*", "text-embedding-*"]}},
            },
            "support": {
                "policy": {
                    "models": {"allow": ["claude-*-haiku*"]},
                    "streaming": False,
                    "max_output_tokens": 512,
                    "max_tokens_action": "clamp",
                }
            },
        },
        "users": {"alice": {"team": "ml", "email": "alice@example.com"}},
        "keys": [
            {
                "id": "alice-laptop",
                "team": "ml",
                "user": "alice",
                "name": "laptop",
                "secret_hash": hash_secret(ALICE),
            },
            {"id": "support-bot", "team": "support", "secret_hash": hash_secret(SUPPORT), "tags": ["bot"]},
            {
                "id": "embedder",
                "team": "ml",
                "secret_hash": hash_secret(EMBEDDER),
                "policy": {"endpoints": {"allow": ["embeddings"]}},  # on every provider
            },
            {
                "id": "old",
                "team": "ml",
                "secret_hash": hash_secret(EXPIRED),
                "expires_at": "2020-01-01T00:00:00Z",
            },
            {
                "id": "office",
                "team": "ml",
                "secret_hash": hash_secret(OFFICE),
                "policy": {"source_addresses": ["10.0.0.0/8"]},
            },
            {
                "id": "local",
                "team": "ml",
                "secret_hash": hash_secret(LOCAL),
                "policy": {"source_addresses": ["127.0.0.1/32", "::1"]},
            },
        ],
        "provider_keys": dict(PROVIDER_KEYS),
    }
    sections.update(overrides)
    return sections


def all_secrets() -> list[str]:
    """Every provider key, gateway-key secret and the admin token: none may leak anywhere."""
    return [*PROVIDER_KEYS.values(), ALICE, SUPPORT, EMBEDDER, EXPIRED, OFFICE, LOCAL, ADMIN_TOKEN]


def openai_client(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=key, max_retries=0)


def anthropic_client(gw: RunningGateway, **credential: str) -> anthropic.AsyncAnthropic:
    """`api_key=…` (x-api-key) or `auth_token=…` (Authorization: Bearer)."""
    return anthropic.AsyncAnthropic(base_url=gw.url("anthropic"), max_retries=0, **credential)


def gemini_client(gw: RunningGateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gw.url("gemini")))
