"""The request bodies the load generators send and the fixed responses the upstreams return."""

from __future__ import annotations

import json
from typing import Any

MODEL = "gpt-4o-mini"
CHAT_PATH = "/v1/chat/completions"

_SYSTEM = (
    "You are a careful coding assistant working inside a monorepo. Answer with short, concrete steps. "
    "Prefer standard-library solutions, cite the files you change, and never invent APIs. When a command "
    "could destroy data, say so before suggesting it. Keep answers under two hundred words unless asked."
)
_USER = (
    "Our aiohttp service returns 502 errors under load when it proxies to an upstream over keep-alive "
    "connections. The logs show 'Server disconnected' roughly once per thousand requests, always on a "
    "connection that sat idle for about sixty seconds. The upstream is nginx with keepalive_timeout 60s "
    "and our client uses a TCPConnector with keepalive_timeout=75. What is happening, and what is the "
    "smallest safe change? Please also explain how to confirm the diagnosis with a packet capture, and "
    "whether retrying idempotent requests automatically would hide any other problem we should know about."
)


def chat_request(stream: bool = False, include_usage: bool = False) -> bytes:
    """A realistic ~1 KB chat-completions request: a system and a user message."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
        "temperature": 0.2,
        "max_tokens": 512,
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(", ", ": ")).encode()


def chat_completion() -> bytes:
    """A fixed `chat.completion` response with usage, as OpenAI sends it (compact JSON, one line)."""
    body = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": (
                        "The upstream closes idle keep-alive connections at 60 s while your pool keeps them "
                        "for 75 s, so a request sometimes goes out on a socket nginx is closing. Set the "
                        "client keepalive_timeout below the one of the server (e.g. 30 s)."
                    ),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 231,
            "completion_tokens": 58,
            "total_tokens": 289,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_bench",
    }
    return json.dumps(body, separators=(",", ":")).encode()
