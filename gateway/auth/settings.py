"""Typed auth configuration: the `auth:`, `policy:`, `teams:`, `users:` and `keys:` sections."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.keys import KEY_ID, GatewayKey, hash_secret, parse_time, valid_hash
from gateway.auth.policy import Policy

PASSTHROUGH = ("allow", "deny")
ADMIN_TOKEN_ENV = "LLM_GATEWAY_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call the gateway.

    `required`: every provider request needs a valid gateway key. `passthrough`: whether a
    caller's own provider key (anything that is not a gateway key) goes upstream as it is;
    `allow` by default, `deny` by default when keys are required (and `allow` is then refused).
    The admin API is on only with an admin token: `admin_token` (write it as `${ENV}`),
    `admin_token_hash` (`sha256:…`), or the LLM_GATEWAY_ADMIN_TOKEN environment variable.
    """

    required: bool = False
    passthrough: str = ""
    admin_token: str = field(default="", repr=False)
    admin_token_hash: str = ""
    refresh_interval_s: float = 0.5  # how often the key store and provider key files are re-checked

    def __post_init__(self) -> None:
        if self.passthrough not in ("", *PASSTHROUGH):
            raise ValueError(f"auth.passthrough must be allow or deny, got {self.passthrough!r}")
        if self.required and self.passthrough == "allow":
            raise ValueError(
                "auth.passthrough: allow contradicts auth.required: true "
                "(provider keys would bypass the required gateway key)"
            )
        if self.admin_token_hash and not valid_hash(self.admin_token_hash):
            raise ValueError("auth.admin_token_hash must look like sha256:<64 hex digits>")
        if self.refresh_interval_s <= 0:
            raise ValueError("auth.refresh_interval_s must be a positive number of seconds")

    @property
    def passthrough_allowed(self) -> bool:
        return (self.passthrough or ("deny" if self.required else "allow")) == "allow"

    def admin_hash(self, env: Mapping[str, str]) -> str:
        """The admin token's hash, or "" when the admin API is off."""
        if self.admin_token_hash:
            return self.admin_token_hash
        token = self.admin_token or env.get(ADMIN_TOKEN_ENV, "")
        return hash_secret(token) if token else ""


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    description: str = ""
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    team: str
    email: str = ""
    policy: Policy = field(default_factory=Policy)


def parse_teams(raw: Any) -> dict[str, Team]:
    teams = {
        name: _build(Team, {"name": name, **spec}, f"teams.{name}") for name, spec in _named(raw, "teams")
    }
    for name, team in teams.items():
        refuse_bypass(team.policy, f"teams.{name}")
    return teams


def refuse_bypass(policy: Policy, where: str) -> None:
    """A guard bypass belongs to one trusted key, never to a whole team, a user or everyone."""
    if policy.guards is not None and policy.guards.bypass:
        raise _error(f"{where}.policy.guards.bypass: only a key can bypass the guards")


def parse_users(raw: Any, teams: Mapping[str, Team]) -> dict[str, User]:
    users: dict[str, User] = {}
    for name, spec in _named(raw, "users"):
        user = _build(User, {"name": name, **spec}, f"users.{name}")
        refuse_bypass(user.policy, f"users.{name}")
        if user.team not in teams:
            raise _error(f"users.{name}.team: unknown team {user.team!r}{_known(teams)}")
        users[name] = user
    return users


def parse_keys(raw: Any, teams: Mapping[str, Team], users: Mapping[str, User]) -> tuple[GatewayKey, ...]:
    """Keys declared in the config: hashes only (`llm-gateway keys hash` prints one for a secret)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _error("keys: expected a list of {id, team, secret_hash, …}")
    keys: list[GatewayKey] = []
    seen: set[str] = set()
    for i, spec in enumerate(raw):
        where = f"keys[{i}]"
        if not isinstance(spec, dict):
            raise _error(f"{where}: expected a mapping")
        if "secret" in spec:
            raise _error(f"{where}.secret: store only the hash (secret_hash: sha256:…), never the secret")
        key = key_from_mapping(spec, where, source="config")
        check_owner(key.team, key.user, teams, users, where)
        if key.id in seen:
            raise _error(f"{where}.id: duplicate key id {key.id!r}")
        seen.add(key.id)
        keys.append(key)
    return tuple(keys)


_KEY_FIELDS = ("id", "name", "team", "user", "tags", "expires_at", "secret_hash", "policy")
_STORED_FIELDS = (*_KEY_FIELDS, "created_at", "revoked_at", "previous_hash", "previous_valid_until")


def key_from_mapping(data: Mapping[str, Any], where: str, source: str = "store") -> GatewayKey:
    """A GatewayKey from the config's or the store's mapping form, validated."""
    allowed = _KEY_FIELDS if source == "config" else _STORED_FIELDS
    if unknown := sorted(set(data) - set(allowed)):
        raise _error(f"{where}: unknown key field(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    key_id = str(data.get("id") or "")
    if not KEY_ID.match(key_id):
        raise _error(f"{where}.id: 1-64 characters of [A-Za-z0-9_.-], got {key_id!r}")
    secret_hash = str(data.get("secret_hash") or "")
    if not valid_hash(secret_hash):
        raise _error(f"{where}.secret_hash: must look like sha256:<64 hex digits>")
    tags = data.get("tags") or ()
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise _error(f"{where}.tags: expected a list of strings")
    try:
        times = {
            name: parse_time(data.get(name), f"{where}.{name}")
            for name in ("created_at", "expires_at", "revoked_at", "previous_valid_until")
        }
    except ValueError as exc:
        raise _error(str(exc)) from None
    return GatewayKey(
        id=key_id,
        team=str(data.get("team") or ""),
        user=str(data.get("user") or ""),
        name=str(data.get("name") or ""),
        tags=tuple(tags),
        secret_hash=secret_hash,
        previous_hash=str(data.get("previous_hash") or ""),
        policy=parse_policy(data.get("policy"), f"{where}.policy"),
        source=source,
        **times,
    )


def check_owner(
    team: str, user: str, teams: Mapping[str, Team], users: Mapping[str, User], where: str
) -> None:
    if team not in teams:
        raise _error(f"{where}.team: unknown team {team!r}{_known(teams)}")
    if user:
        if user not in users:
            raise _error(f"{where}.user: unknown user {user!r}{_known(users)}")
        if users[user].team != team:
            raise _error(f"{where}: user {user!r} belongs to team {users[user].team!r}, not {team!r}")


def parse_policy(raw: Any, where: str) -> Policy:
    if raw is None:
        return Policy()
    if not isinstance(raw, dict):
        raise _error(f"{where}: expected a mapping")
    return _build(Policy, raw, where)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _named(raw: Any, section: str) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise _error(f"{section}: expected a mapping of name -> settings")
    out = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not KEY_ID.match(name):
            raise _error(f"{section}.{name}: names are 1-64 characters of [A-Za-z0-9_.-]")
        if spec is not None and not isinstance(spec, dict):
            raise _error(f"{section}.{name}: expected a mapping")
        out.append((name, dict(spec or {})))
    return out


def _known(names: Mapping[str, Any]) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (none are declared)"


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    from gateway.config import build  # the config module imports this one

    return build(cls, data, where)


def _error(message: str) -> Exception:
    from gateway.config import ConfigError

    return ConfigError(message)
