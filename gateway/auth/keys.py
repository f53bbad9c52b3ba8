"""Gateway keys (virtual keys): the record, its secret's hash, and the lookup by presented secret.

A secret is `lgw_` + 43 url-safe characters (256 random bits), shown once at creation. Only its
SHA-256 is stored: a salt or a slow hash protects guessable passwords, not 256-bit random
tokens, and a plain digest allows a constant-time-per-request lookup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.auth.policy import EMPTY_POLICY, GuardPolicy, Patterns, Policy

SECRET_PREFIX = "lgw_"
HASH_PREFIX = "sha256:"
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def valid_hash(value: str) -> bool:
    return bool(_HASH.match(value))


def same_hash(a: str, b: str) -> bool:
    """Timing-safe equality of two stored-form hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


class KeyState(StrEnum):
    VALID = "valid"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """One gateway key. `previous_hash` stays valid until `previous_valid_until` after a rotation."""

    id: str
    team: str
    secret_hash: str
    name: str = ""
    user: str = ""
    tags: tuple[str, ...] = ()
    created_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    previous_hash: str = ""
    previous_valid_until: dt.datetime | None = None
    policy: Policy = field(default_factory=Policy)
    source: str = "store"  # "config": declared in the config file (managed there, not via the API)

    def state(self, now: dt.datetime, presented_hash: str) -> KeyState:
        if self.revoked_at is not None and self.revoked_at <= now:
            return KeyState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return KeyState.EXPIRED
        if same_hash(presented_hash, self.secret_hash):
            return KeyState.VALID
        if (
            self.previous_hash
            and same_hash(presented_hash, self.previous_hash)
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
        ):
            return KeyState.VALID
        return KeyState.EXPIRED  # a rotated-out secret after its grace period

    def public(self) -> dict[str, Any]:
        """The key as the admin API and CLI show it: everything but hashes."""
        return {
            "id": self.id,
            "name": self.name,
            "team": self.team,
            "user": self.user or None,
            "tags": list(self.tags),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "rotated_grace_until": _iso(self.previous_valid_until) if self.previous_hash else None,
            "policy": policy_to_dict(self.policy),
            "source": self.source,
        }

    def to_json(self) -> dict[str, Any]:
        """The stored form (hashes included, never a secret)."""
        data = self.public()
        data.pop("rotated_grace_until")
        data.pop("source")
        data.update(
            secret_hash=self.secret_hash,
            previous_hash=self.previous_hash or None,
            previous_valid_until=_iso(self.previous_valid_until),
        )
        return data


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parse_time(value: Any, what: str) -> dt.datetime | None:
    """An aware UTC datetime from an ISO string (naive = UTC), a datetime, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what}: not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Only the settings a policy actually sets (the shape the config and the API accept)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(policy):
        value = getattr(policy, f.name)
        default = getattr(EMPTY_POLICY, f.name)
        if value == default:
            continue
        if isinstance(value, Patterns):
            out[f.name] = {
                k: list(v) for k, v in dataclasses.asdict(value).items() if v is not None and v != ()
            }
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif isinstance(value, GuardPolicy):
            out[f.name] = {"actions": value.actions, **({"bypass": True} if value.bypass else {})}
        else:
            out[f.name] = value
    return out


@dataclass(frozen=True, slots=True)
class Lookup:
    state: KeyState
    key: GatewayKey | None = None


UNKNOWN = Lookup(KeyState.UNKNOWN)


class KeyIndex:
    """Every known key (config + store), indexed by current and previous secret hash."""

    def __init__(self, keys: dict[str, GatewayKey]) -> None:
        self.keys = keys
        self._by_hash: dict[str, GatewayKey] = {}
        for key in keys.values():
            self._by_hash[key.secret_hash] = key
            if key.previous_hash:
                self._by_hash.setdefault(key.previous_hash, key)

    def lookup(self, secret: str, now: dt.datetime) -> Lookup:
        presented = hash_secret(secret)
        key = self._by_hash.get(presented)
        if key is None:
            return UNKNOWN
        return Lookup(key.state(now, presented), key)

    def __len__(self) -> int:
        return len(self.keys)
