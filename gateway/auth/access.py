"""Identify the caller of each request and decide which credential goes upstream.

A gateway key is accepted wherever the caller's SDK puts its API key: `Authorization: Bearer`,
`x-api-key`, `x-goog-api-key`, `api-key` or `?key=`. With a gateway key, every caller
credential is stripped and the provider's server-side key injected. Anything else presented is
the caller's own provider key, forwarded only when `auth.passthrough` allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

from multidict import CIMultiDict

from gateway.auth.keys import SECRET_PREFIX, GatewayKey, KeyState, hash_secret, same_hash
from gateway.auth.policy import PolicyChain
from gateway.auth.registry import KeyRegistry
from gateway.config import GatewayConfig, ProviderConfig
from gateway.errors import ErrorCode, GatewayError

log = logging.getLogger("gateway.auth")

CREDENTIAL_HEADERS = ("Authorization", "x-api-key", "x-goog-api-key", "api-key")
QUERY_CREDENTIAL = "key"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, the policies that apply, and the provider key to inject (if any)."""

    policy: PolicyChain
    key_id: str = ""
    user: str = ""
    team: str = ""
    provider_secret: str | None = field(default=None, repr=False)  # set: strip the caller's, inject this
    refusal: GatewayError | None = None  # why this caller may not proceed (401; 503 without a provider key)

    @property
    def substitutes(self) -> bool:
        return self.provider_secret is not None

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal


class ProviderCredentials:
    """The server-side key of each provider: from the config, or from a file re-read when it changes."""

    def __init__(self, providers: Mapping[str, ProviderConfig]) -> None:
        self._values: dict[str, str] = {}
        self._files: dict[str, tuple[Path, tuple[int, int] | None]] = {}
        self.configure(providers)

    def configure(self, providers: Mapping[str, ProviderConfig]) -> None:
        values: dict[str, str] = {}
        files: dict[str, tuple[Path, tuple[int, int] | None]] = {}
        for name, provider in providers.items():
            if provider.api_key:
                values[name] = provider.api_key
            elif provider.api_key_file:
                files[name] = (Path(provider.api_key_file), None)
        self._values, self._files = values, files
        self.reload_files()

    def get(self, provider: str) -> str | None:
        return self._values.get(provider)

    def reload_files(self) -> list[str]:
        """Re-read the key files that changed since the last look; returns the providers updated."""
        changed = []
        for name, (path, seen) in self._files.items():
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp == seen:
                    continue
                value = path.read_text().strip()
            except OSError as exc:
                if seen is not None or name not in self._values:
                    log.error("cannot read the %s provider key file %s: %s", name, path, exc.strerror)
                self._files[name] = (path, None)
                continue
            self._files[name] = (path, stamp)
            if value:
                if seen is not None:
                    log.info("provider key for %s reloaded from %s", name, path)
                self._values[name] = value
                changed.append(name)
        return changed


class Access:
    """The auth settings, the key registry and the provider keys: everything `identify` needs."""

    def __init__(
        self, config: GatewayConfig, registry: KeyRegistry, env: Mapping[str, str] | None = None
    ) -> None:
        self.registry = registry
        self.credentials = ProviderCredentials(config.providers)
        self.refresh_interval_s = config.auth.refresh_interval_s
        self._watcher: asyncio.Task[None] | None = None
        self.configure(config, env)

    async def start(self) -> None:
        """Load the stored keys, then keep keys and provider key files fresh in the background."""
        await self.registry.refresh()
        self._watcher = asyncio.create_task(self._watch(), name="access-refresh")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.registry.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                await self.registry.refresh()
                self.credentials.reload_files()
            except Exception:  # the watcher must live on, or keys would silently go stale
                log.exception("refreshing gateway keys or provider key files failed")

    def configure(self, config: GatewayConfig, env: Mapping[str, str] | None = None) -> None:
        """Take the auth parts of a (re)loaded config; the registry gets its keys, teams and users."""
        self.required = config.auth.required
        self.passthrough = config.auth.passthrough_allowed
        self.admin_hash = config.auth.admin_hash(os.environ if env is None else env)
        self.global_policy = config.policy
        self.credentials.configure(config.providers)
        self.registry.reconfigure(config.keys, config.teams, config.users)
        self.anonymous = Caller(PolicyChain((("global", "", self.global_policy),)))

    def is_admin_token(self, presented: str) -> bool:
        return bool(self.admin_hash) and same_hash(hash_secret(presented), self.admin_hash)

    def identify(self, headers: Mapping[str, str], query: str, provider: str) -> Caller:
        """The caller of one request. A refused caller (`refusal`: a 401 that never echoes what was
        presented) still carries the key's identity when the key is known, for the audit."""
        presented = presented_credentials(headers, query)
        if not presented:
            if self.required:
                return self.refused(
                    "missing gateway key: send it as your API key "
                    "(Authorization: Bearer, x-api-key, x-goog-api-key or ?key=)"
                )
            return self.anonymous
        now = dt.datetime.now(dt.UTC)
        index = self.registry.index
        gateway_key: GatewayKey | None = None
        gateway_secret = ""
        for secret in presented:
            if self.is_admin_token(secret):
                return self.refused("the admin token is not an API key; use a gateway key")
            found = index.lookup(secret, now)
            if found.key is None and not secret.startswith(SECRET_PREFIX):
                continue  # the caller's own provider key
            if gateway_secret and secret != gateway_secret:
                return self.refused("more than one gateway key presented")
            if found.key is None:
                return self.refused("invalid gateway key")
            if found.state is KeyState.REVOKED:
                return self.refused(f"gateway key '{found.key.id}' has been revoked", found.key)
            if found.state is KeyState.EXPIRED:
                return self.refused(f"gateway key '{found.key.id}' has expired", found.key)
            gateway_key, gateway_secret = found.key, secret
        if gateway_key is None:
            if not self.passthrough:
                return self.refused("a gateway key is required; provider keys are not accepted here")
            return self.anonymous
        key = gateway_key
        provider_secret = self.credentials.get(provider)
        if provider_secret is None:
            missing = GatewayError(
                ErrorCode.UNAVAILABLE,
                f"the gateway has no credential configured for provider '{provider}'",
                rule="auth.provider_credential",
            )
            return Caller(self.policy_chain(key), key.id, key.user, key.team, refusal=missing)
        return Caller(self.policy_chain(key), key.id, key.user, key.team, provider_secret)

    def refused(self, message: str, key: GatewayKey | None = None) -> Caller:
        refusal = GatewayError(ErrorCode.AUTHENTICATION, message, rule="auth.key")
        if key is None:
            return Caller(self.anonymous.policy, refusal=refusal)
        return Caller(self.anonymous.policy, key.id, key.user, key.team, refusal=refusal)

    def policy_chain(self, key: GatewayKey) -> PolicyChain:
        levels = [("key", key.id, key.policy)]
        user = self.registry.users.get(key.user) if key.user else None
        if user is not None:
            levels.append(("user", user.name, user.policy))
        team = self.registry.teams.get(key.team)
        if team is not None:
            levels.append(("team", team.name, team.policy))
        levels.append(("global", "", self.global_policy))
        return PolicyChain(tuple(levels))


def presented_credentials(headers: Mapping[str, str], query: str) -> list[str]:
    """Every distinct credential the caller sent, in header order, then `?key=`."""
    found: list[str] = []
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name, "").strip()
        if name == "Authorization":
            scheme, _, token = value.partition(" ")
            value = token.strip() if scheme.lower() == "bearer" else ""
        if value and value not in found:
            found.append(value)
    if query and QUERY_CREDENTIAL + "=" in query:
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if (
                unquote_plus(name) == QUERY_CREDENTIAL
                and (value := unquote_plus(value))
                and value not in found
            ):
                found.append(value)
    return found


def without_query_credential(query: str) -> str:
    """The query string minus `key=…`, every other parameter byte-for-byte as sent."""
    if QUERY_CREDENTIAL + "=" not in query:
        return query
    return "&".join(p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != QUERY_CREDENTIAL)


def inject_credential(headers: CIMultiDict[str], header: tuple[str, str]) -> None:
    """Strip every caller credential header, then set the provider's."""
    for name in CREDENTIAL_HEADERS:
        headers.popall(name, None)
    headers[header[0]] = header[1]
