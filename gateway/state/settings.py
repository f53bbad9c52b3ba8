"""Typed state-store settings (the `state:` section of the config)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

STATE_BACKENDS = ("local", "redis")


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Where keys and counters live.

    `local`: one process — keys created at run time persist in a file under `path`, counters in
    memory. `redis`: many replicas share keys and counters through the Redis at `redis_url`
    (`redis://[:password@]host:port/db`, `rediss://` for TLS); `prefix` namespaces every Redis key,
    so one Redis can serve several gateway deployments.
    """

    backend: str = "local"
    path: str = "./data/state"
    redis_url: str = ""
    prefix: str = "llmgw:"
    timeout_s: float = 0.5  # per Redis call; a slower answer counts as Redis unreachable

    def __post_init__(self) -> None:
        if self.backend not in STATE_BACKENDS:
            known = ", ".join(STATE_BACKENDS)
            raise ValueError(f"state.backend must be one of {known}, got {self.backend!r}")
        if self.backend == "redis" and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("state.redis_url: a redis://, rediss:// or unix:// URL is needed with redis")
        if self.timeout_s <= 0:
            raise ValueError("state.timeout_s must be a positive number of seconds")

    @property
    def safe_redis_url(self) -> str:
        """The Redis URL for logs and errors, its password replaced."""
        parts = urlsplit(self.redis_url)
        if not parts.password:
            return self.redis_url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
