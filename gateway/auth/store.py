"""Where keys created at run time live: a local file (one machine) or Redis (many replicas).

Both stores keep a version that changes with every write; each gateway polls it (a stat or one
Redis GET) every `auth.refresh_interval_s` and reloads the keys when it moved, so a key created
or revoked on any replica, or by the CLI, is live everywhere within about a second. Requests
never wait on the store: lookups use the last loaded snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from gateway.auth.keys import GatewayKey
from gateway.auth.settings import key_from_mapping
from gateway.state.redis_client import call, open_redis
from gateway.state.settings import StateSettings

log = logging.getLogger("gateway.auth")


class KeyExists(Exception):
    """A key with this id exists already."""


class KeyNotFound(Exception):
    """No key with this id in the store."""


class StoreUnavailable(Exception):
    """The store cannot be reached; the message never includes credentials."""


class KeyStore(Protocol):
    """Persistence for run-time keys. `update` replaces a whole record (rotate, revoke)."""

    description: str

    async def version(self) -> str: ...

    async def load(self) -> tuple[str, dict[str, GatewayKey]]: ...

    async def create(self, key: GatewayKey) -> None: ...

    async def update(self, key: GatewayKey) -> None: ...

    async def close(self) -> None: ...


def open_key_store(settings: StateSettings) -> KeyStore:
    if settings.backend == "redis":
        return RedisKeyStore(settings)
    return FileKeyStore(Path(settings.path) / "keys.json")


def decode_keys(records: dict[str, Any], where: str) -> dict[str, GatewayKey]:
    """Stored records to keys; a record that does not parse is logged and skipped, not fatal."""
    keys: dict[str, GatewayKey] = {}
    for key_id, data in records.items():
        try:
            keys[key_id] = key_from_mapping(data, f"{where}[{key_id}]")
        except (ValueError, TypeError) as exc:
            log.error("ignoring an unreadable stored key %s: %s", key_id, exc)
    return keys


class FileKeyStore:
    """Keys in one JSON file (0600), rewritten atomically under an exclusive lock on a side file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    async def version(self) -> str:
        return await asyncio.to_thread(self._version)

    async def load(self) -> tuple[str, dict[str, GatewayKey]]:
        return await asyncio.to_thread(self._load)

    async def create(self, key: GatewayKey) -> None:
        await asyncio.to_thread(self._write, key, True)

    async def update(self, key: GatewayKey) -> None:
        await asyncio.to_thread(self._write, key, False)

    async def close(self) -> None:
        return None

    def _version(self) -> str:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return "absent"
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def _load(self) -> tuple[str, dict[str, GatewayKey]]:
        if not self.path.exists():  # nothing created yet: no directory or lock file either
            return "absent", {}
        with self._locked():
            version = self._version()
            return version, decode_keys(self._read(), str(self.path))

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        return keys if isinstance(keys, dict) else {}

    def _write(self, key: GatewayKey, new: bool) -> None:
        with self._locked():
            records = self._read()
            if new and key.id in records:
                raise KeyExists(key.id)
            if not new and key.id not in records:
                raise KeyNotFound(key.id)
            records[key.id] = key.to_json()
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"format": 1, "keys": records}, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# One hash of id -> JSON and a version counter, changed together atomically.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
return redis.call('INCR', KEYS[2])
"""
_UPDATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""


class RedisKeyStore:
    """Keys in a Redis hash shared by every replica."""

    def __init__(self, settings: StateSettings) -> None:
        self._client = open_redis(settings, max(settings.timeout_s, 2.0))
        self._hash = f"{settings.prefix}keys"
        self._version_key = f"{settings.prefix}keys:version"
        self._create = self._client.register_script(_CREATE)
        self._update = self._client.register_script(_UPDATE)
        self.description = f"redis {settings.safe_redis_url}"

    async def version(self) -> str:
        value = await self._call(self._client.get(self._version_key))
        return value.decode() if value else "0"

    async def load(self) -> tuple[str, dict[str, GatewayKey]]:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.hgetall(self._hash)
            version, raw = await self._call(pipe.execute())
        records = {k.decode(): json.loads(v) for k, v in raw.items()}
        return (version.decode() if version else "0"), decode_keys(records, self._hash)

    async def create(self, key: GatewayKey) -> None:
        args = [key.id, json.dumps(key.to_json(), sort_keys=True)]
        if not await self._call(self._create(keys=[self._hash, self._version_key], args=args)):
            raise KeyExists(key.id)

    async def update(self, key: GatewayKey) -> None:
        args = [key.id, json.dumps(key.to_json(), sort_keys=True)]
        if not await self._call(self._update(keys=[self._hash, self._version_key], args=args)):
            raise KeyNotFound(key.id)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        return await call(awaitable, self.description, StoreUnavailable)
