"""The `state:` config section."""

from __future__ import annotations

import pytest
import redis

from gateway.config import ConfigError, load_config
from tests.redis_server import RedisServer


def test_local_is_the_default() -> None:
    assert load_config().state.backend == "local"


def test_redis_backend_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match=r"state\.redis_url"):
        load_config(None, {"state": {"backend": "redis"}})


def test_password_never_shown() -> None:
    state = load_config(None, {"state": {"backend": "redis", "redis_url": "redis://:s3cret@h:6379/0"}}).state
    assert "s3cret" not in state.safe_redis_url


def test_redis_fixture_is_a_real_server(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("x", "1")
    assert client.get("x") == b"1"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("x")
