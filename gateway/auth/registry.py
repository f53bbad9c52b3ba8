"""Every gateway key the gateway knows — config-declared and run-time — and their life cycle.

The registry keeps an in-memory index (lookups never touch the store); `refresh` reloads it
when the store's version moved (gateway/auth/access.py polls it). Create, rotate and revoke
write to the store first, then refresh, so the replica that served the admin call sees the
change at once and the others on their next poll.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.auth.keys import GatewayKey, KeyIndex, hash_secret, new_key_id, new_secret
from gateway.auth.settings import Team, User, check_owner, key_from_mapping, utcnow
from gateway.auth.store import KeyExists, KeyNotFound, KeyStore, StoreUnavailable

log = logging.getLogger("gateway.auth")


class KeyRequestError(ValueError):
    """An admin request about keys that cannot be honoured; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key and its secret, which exists only in this object and the one response that shows it."""

    key: GatewayKey
    secret: str = dataclasses.field(repr=False)


class KeyRegistry:
    def __init__(
        self,
        store: KeyStore,
        config_keys: Sequence[GatewayKey],
        teams: Mapping[str, Team],
        users: Mapping[str, User],
    ) -> None:
        self.store = store
        self._config_keys = tuple(config_keys)
        self._teams, self._users = dict(teams), dict(users)
        self._stored: dict[str, GatewayKey] = {}
        self._version: str | None = None
        self.index = KeyIndex({k.id: k for k in self._config_keys})
        self.loaded = False  # the store's keys have been read at least once
        self._store_down = False

    async def close(self) -> None:
        await self.store.close()

    def reconfigure(
        self, config_keys: Sequence[GatewayKey], teams: Mapping[str, Team], users: Mapping[str, User]
    ) -> None:
        """A reloaded config's keys, teams and users (SIGHUP)."""
        self._config_keys = tuple(config_keys)
        self._teams, self._users = dict(teams), dict(users)
        self._rebuild()

    @property
    def teams(self) -> Mapping[str, Team]:
        return self._teams

    @property
    def users(self) -> Mapping[str, User]:
        return self._users

    async def refresh(self, force: bool = False) -> bool:
        """Reload the store's keys if its version moved; False when the store is unreachable."""
        try:
            if not force and self._version is not None and await self.store.version() == self._version:
                self._note_store(up=True)
                return True
            self._version, self._stored = await self.store.load()
        except StoreUnavailable as exc:
            self._note_store(up=False, why=str(exc))
            return False
        self._note_store(up=True)
        self.loaded = True
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        keys = dict(self._stored)
        for key in self._config_keys:
            if key.id in keys:
                log.warning("key id %s is both in the config and in the key store; the config wins", key.id)
            keys[key.id] = key
        self.index = KeyIndex(keys)

    def _note_store(self, up: bool, why: str = "") -> None:
        if up and self._store_down:
            log.warning("key store %s is reachable again", self.store.description)
        elif not up and not self._store_down:
            log.error("key store unreachable (%s); serving the last known keys", why)
        self._store_down = not up

    # --- the life cycle (admin API and CLI) ---

    def list(self, team: str = "", include_revoked: bool = True) -> list[GatewayKey]:
        keys = sorted(self.index.keys.values(), key=lambda k: (k.team, k.id))
        return [k for k in keys if (not team or k.team == team) and (include_revoked or k.revoked_at is None)]

    def get(self, key_id: str) -> GatewayKey:
        key = self.index.keys.get(key_id)
        if key is None:
            raise KeyRequestError(f"no key with id {key_id!r}", status=404)
        return key

    async def create(self, spec: Mapping[str, Any]) -> IssuedKey:
        """A new key from {team, user?, name?, id?, tags?, expires_at?, policy?}; its secret, once."""
        fields = {"id", "name", "team", "user", "tags", "expires_at", "policy"}
        if unknown := sorted(set(spec) - fields):
            raise KeyRequestError(
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        data = dict(spec)
        if data.get("user") and not data.get("team") and data["user"] in self._users:
            data["team"] = self._users[data["user"]].team
        data.setdefault("id", None)
        data["id"] = data["id"] or new_key_id()
        secret = new_secret()
        data.update(secret_hash=hash_secret(secret), created_at=utcnow().isoformat())
        key = self._validated(data)
        if key.expires_at is not None and key.expires_at <= utcnow():
            raise KeyRequestError("expires_at is in the past")
        if key.id in self.index.keys:
            raise KeyRequestError(f"a key with id {key.id!r} exists already", status=409)
        await self._write(self.store.create, key)
        log.info("key created: id=%s team=%s user=%s", key.id, key.team, key.user or "-")
        return IssuedKey(key, secret)

    async def rotate(self, key_id: str, grace: dt.timedelta = dt.timedelta(0)) -> IssuedKey:
        """A new secret for the same key; the old one keeps working for `grace`."""
        key = self._mutable(key_id)
        if key.revoked_at is not None:
            raise KeyRequestError(f"key {key_id!r} is revoked; create a new one", status=409)
        secret = new_secret()
        now = utcnow()
        rotated = dataclasses.replace(
            key,
            secret_hash=hash_secret(secret),
            previous_hash=key.secret_hash if grace > dt.timedelta(0) else "",
            previous_valid_until=now + grace if grace > dt.timedelta(0) else None,
        )
        await self._write(self.store.update, rotated)
        log.info("key rotated: id=%s grace=%ss", key_id, int(grace.total_seconds()))
        return IssuedKey(rotated, secret)

    async def revoke(self, key_id: str) -> GatewayKey:
        key = self._mutable(key_id)
        if key.revoked_at is not None:
            return key
        revoked = dataclasses.replace(key, revoked_at=utcnow())
        await self._write(self.store.update, revoked)
        log.info("key revoked: id=%s", key_id)
        return revoked

    def _mutable(self, key_id: str) -> GatewayKey:
        key = self.get(key_id)
        if key.source == "config":
            raise KeyRequestError(
                f"key {key_id!r} is declared in the config file; change or remove it there", status=409
            )
        return key

    def _validated(self, data: Mapping[str, Any]) -> GatewayKey:
        from gateway.config import ConfigError

        try:
            key = key_from_mapping(data, "key")
            check_owner(key.team, key.user, self._teams, self._users, "key")
        except (ConfigError, ValueError) as exc:
            raise KeyRequestError(str(exc)) from None
        return key

    async def _write(self, write: Any, key: GatewayKey) -> None:
        try:
            await write(key)
        except KeyExists:
            raise KeyRequestError(f"a key with id {key.id!r} exists already", status=409) from None
        except KeyNotFound:
            raise KeyRequestError(f"no key with id {key.id!r} in the key store", status=404) from None
        except StoreUnavailable as exc:
            raise KeyRequestError(f"the key store is unavailable ({exc})", status=503) from None
        await self.refresh(force=True)
