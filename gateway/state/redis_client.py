"""The one way the gateway talks to Redis: a client from the state settings, and calls whose
failures become the caller's own "unavailable" error (its message never carries the password)."""

from __future__ import annotations

from typing import Any

from gateway.state.settings import StateSettings


def open_redis(settings: StateSettings, timeout_s: float) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )


async def call(awaitable: Any, description: str, unavailable: type[Exception]) -> Any:
    """Await one Redis call; a Redis or socket error raises `unavailable(description: error type)`."""
    import redis

    try:
        return await awaitable
    except (redis.RedisError, OSError) as exc:
        raise unavailable(f"{description}: {type(exc).__name__}") from None
