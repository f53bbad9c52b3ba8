"""Key stores (file and real Redis) and the registry's life cycle on top of them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from gateway.auth.keys import KeyState, hash_secret
from gateway.auth.registry import KeyRegistry, KeyRequestError
from gateway.auth.settings import Team, User
from gateway.auth.store import FileKeyStore, KeyStore, RedisKeyStore, StoreUnavailable
from gateway.state.settings import StateSettings
from tests.redis_server import RedisServer

TEAMS = {"ml": Team("ml"), "ops": Team("ops")}
USERS = {"alice": User("alice", "ml")}
NOW = dt.datetime.now(dt.UTC)


def registry(store: KeyStore) -> KeyRegistry:
    return KeyRegistry(store, (), TEAMS, USERS)


def redis_store(server: RedisServer, prefix: str = "t:") -> RedisKeyStore:
    return RedisKeyStore(StateSettings(backend="redis", redis_url=server.url, prefix=prefix))


@pytest.fixture(params=["file", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[KeyStore, KeyStore]:
    """Two handles on one store, as two replicas (or a replica and the CLI) would have."""
    if request.param == "file":
        return FileKeyStore(tmp_path / "keys.json"), FileKeyStore(tmp_path / "keys.json")
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_store(server), redis_store(server)


async def test_create_rotate_revoke_seen_by_another_replica(stores: tuple[KeyStore, KeyStore]) -> None:
    one, two = registry(stores[0]), registry(stores[1])
    await one.refresh()
    await two.refresh()
    issued = await one.create({"user": "alice", "name": "ci", "tags": ["ci"]})
    assert issued.key.team == "ml"  # from the user
    assert one.index.lookup(issued.secret, NOW).state is KeyState.VALID
    assert two.index.lookup(issued.secret, NOW).key is None  # not yet polled
    await two.refresh()
    assert two.index.lookup(issued.secret, NOW).state is KeyState.VALID

    rotated = await two.rotate(issued.key.id, dt.timedelta(minutes=5))
    await one.refresh()
    now = dt.datetime.now(dt.UTC)
    assert one.index.lookup(issued.secret, now).state is KeyState.VALID  # grace
    assert one.index.lookup(issued.secret, now + dt.timedelta(minutes=6)).state is KeyState.EXPIRED
    assert one.index.lookup(rotated.secret, now).state is KeyState.VALID

    await one.revoke(issued.key.id)
    await two.refresh()
    assert two.index.lookup(rotated.secret, dt.datetime.now(dt.UTC)).state is KeyState.REVOKED
    for r in (one, two):
        await r.close()


async def test_concurrent_creates_with_one_id_succeed_once(stores: tuple[KeyStore, KeyStore]) -> None:
    one, two = registry(stores[0]), registry(stores[1])
    results = await asyncio.gather(
        *(r.create({"team": "ml", "id": "same"}) for r in (one, two) for _ in range(3)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, KeyRequestError)]
    assert len(created) == 1 and len(refused) == 5 and all(e.status == 409 for e in refused)
    await one.close()
    await two.close()


async def test_concurrent_creates_all_land(stores: tuple[KeyStore, KeyStore]) -> None:
    one, two = registry(stores[0]), registry(stores[1])
    await asyncio.gather(*(r.create({"team": "ops"}) for r in (one, two) for _ in range(10)))
    await one.refresh(force=True)
    assert len(one.list(team="ops")) == 20
    await one.close()
    await two.close()


async def test_nothing_but_hashes_is_stored(tmp_path: Path, redis_server: RedisServer) -> None:
    import redis

    file_registry = registry(FileKeyStore(tmp_path / "keys.json"))
    issued = await file_registry.create({"team": "ml"})
    text = (tmp_path / "keys.json").read_text()
    assert issued.secret not in text and hash_secret(issued.secret) in text
    redis_registry = registry(redis_store(redis_server))
    issued = await redis_registry.create({"team": "ml"})
    dump = json.dumps(
        {k.decode(): v.decode() for k, v in redis.Redis.from_url(redis_server.url).hgetall("t:keys").items()}
    )
    assert issued.secret not in dump and hash_secret(issued.secret) in dump


async def test_redis_outage_keeps_the_last_known_keys(redis_server: RedisServer) -> None:
    r = registry(redis_store(redis_server))
    issued = await r.create({"team": "ml"})
    redis_server.stop()
    assert await r.refresh() is False  # unreachable: reported, not raised
    assert r.index.lookup(issued.secret, dt.datetime.now(dt.UTC)).state is KeyState.VALID
    with pytest.raises(KeyRequestError) as err:
        await r.create({"team": "ml"})
    assert err.value.status == 503
    redis_server.start()
    assert await r.refresh() is True
    await r.close()


async def test_unreadable_records_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    good = {"id": "ok", "team": "ml", "secret_hash": hash_secret("x")}
    path.write_text(json.dumps({"keys": {"ok": good, "bad": {"id": "bad", "secret_hash": "md5:1"}}}))
    r = registry(FileKeyStore(path))
    await r.refresh()
    assert [k.id for k in r.list()] == ["ok"]


async def test_a_corrupt_key_file_is_an_unavailable_store(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(StoreUnavailable):
        await FileKeyStore(path).load()


async def test_config_keys_win_and_are_read_only(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    r = registry(store)
    issued = await r.create({"team": "ml", "id": "dup"})
    from gateway.auth.settings import key_from_mapping

    config_key = key_from_mapping(
        {"id": "dup", "team": "ops", "secret_hash": hash_secret("c")}, "k", source="config"
    )
    r.reconfigure([config_key], TEAMS, USERS)
    assert r.get("dup").team == "ops"
    assert r.index.lookup(issued.secret, NOW).key is None
    with pytest.raises(KeyRequestError, match="declared in the config"):
        await r.revoke("dup")


async def test_expiry_in_the_past_and_revoked_rotation_refused(tmp_path: Path) -> None:
    r = registry(FileKeyStore(tmp_path / "keys.json"))
    with pytest.raises(KeyRequestError, match="in the past"):
        await r.create({"team": "ml", "expires_at": "2000-01-01"})
    now = dt.datetime.now(dt.UTC)
    issued = await r.create({"team": "ml", "expires_at": (now + dt.timedelta(seconds=30)).isoformat()})
    assert r.index.lookup(issued.secret, now).state is KeyState.VALID
    assert r.index.lookup(issued.secret, now + dt.timedelta(seconds=31)).state is KeyState.EXPIRED
    revoked = await r.revoke(issued.key.id)
    assert dataclasses.replace(revoked, revoked_at=None) == dataclasses.replace(issued.key, revoked_at=None)
    with pytest.raises(KeyRequestError, match="revoked"):
        await r.rotate(issued.key.id)
