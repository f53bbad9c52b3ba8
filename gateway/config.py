"""Typed configuration: one YAML file, `${ENV}` interpolation, validated once at startup."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.audit.settings import AuditSettings
from gateway.auth.keys import GatewayKey
from gateway.auth.policy import Policy
from gateway.auth.settings import AuthSettings, Team, User, parse_keys, parse_teams, parse_users
from gateway.limits.settings import LimitsSettings
from gateway.pricing.table import PricingError, load_table
from gateway.stages.scan.settings import GuardSettings
from gateway.state.settings import StateSettings
from gateway.telemetry.settings import TelemetrySettings

PROVIDER_KINDS = ("openai", "anthropic", "gemini")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Top-level paths the gateway serves itself; no provider may be routed there.
RESERVED_NAMES = frozenset(("admin", "llm-gateway", "metrics", "healthz", "readyz", "_gateway"))
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and how to fix it."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds; each one ends in a provider-shaped 504."""

    connect_s: float = 10.0
    first_byte_s: float = 600.0  # reasoning models can think for minutes before the first byte
    idle_s: float = 300.0  # between two chunks of a streamed response


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream: a known kind at a base URL, routed under /{name}/."""

    name: str
    kind: str
    base_url: str
    timeouts: Timeouts | None = None  # None: the global timeouts
    forward_traceparent: bool = False
    # The server-side credential injected for callers with a gateway key: a value (write it as
    # ${ENV}) or a file re-read when it changes (rotation without restart). Never in repr or logs.
    api_key: str = field(default="", repr=False)
    api_key_file: str = ""
    auth_header: str = ""  # override the kind's credential header (e.g. `api-key` for Azure OpenAI)

    def __post_init__(self) -> None:
        if self.api_key and self.api_key_file:
            raise ValueError("set api_key or api_key_file, not both")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace_s: float = 30.0
    handler_cancellation: bool = True  # cancel the upstream call when the client goes away
    state_dir: str = "./data"  # runtime file for local CLI commands
    access_log: bool = True  # one line per request (no query strings, no keys)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What of each exchange the audit keeps besides metadata; bounded per request."""

    request_preview_chars: int = 4096
    response_preview_chars: int = 4096
    parse_limit_bytes: int = 4 * 1024 * 1024  # non-streamed bodies parsed for usage up to this size


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """Prices beyond the shipped table: `file` (same format as gateway/pricing/prices.yaml) and
    `models` ({provider or kind: {model: {input, output, cache_read, cache_write, reasoning, tiers}}},
    USD per million tokens), later winning."""

    file: str = ""
    models: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    audit: AuditSettings = field(default_factory=AuditSettings)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    guards: GuardSettings = field(default_factory=GuardSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    state: StateSettings = field(default_factory=StateSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    policy: Policy = field(default_factory=Policy)  # global defaults; teams, users and keys refine them
    teams: dict[str, Team] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    keys: tuple[GatewayKey, ...] = ()  # declared in the config (hashes only)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    log_level: str = "info"

    def timeouts_for(self, provider: ProviderConfig) -> Timeouts:
        return provider.timeouts or self.timeouts


def default_providers() -> dict[str, ProviderConfig]:
    return {k: ProviderConfig(name=k, kind=k, base_url=u) for k, u in DEFAULT_BASE_URLS.items()}


def interpolate(value: Any, path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; an unset VAR without default is an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or 'config'}: environment variable ${{{name}}} is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check/convert one YAML value against a dataclass field type, with an actionable message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, path)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            number = tp(value)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{path}: must not be negative, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{where}: unknown key{hint}")
        kwargs[key] = _coerce(hints[key], value, where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a section's own validation (e.g. audit.dsn)
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _providers(raw: Any) -> dict[str, ProviderConfig]:
    providers = default_providers()
    if raw is None:
        return providers
    if not isinstance(raw, dict):
        raise ConfigError("providers: expected a mapping of name -> {kind, base_url}")
    for name, spec in raw.items():
        where = f"providers.{name}"
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(f"{where}: provider names are lowercase [a-z0-9_.-] and not reserved")
        spec = dict(spec or {})
        kind = spec.setdefault("kind", name if name in PROVIDER_KINDS else None)
        if kind not in PROVIDER_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(PROVIDER_KINDS)}, got {kind!r}")
        spec.setdefault("base_url", DEFAULT_BASE_URLS[kind] if name in PROVIDER_KINDS else None)
        if not spec["base_url"] or not str(spec["base_url"]).startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: an http(s) URL is required, got {spec['base_url']!r}")
        spec["base_url"] = str(spec["base_url"]).rstrip("/")
        providers[name] = build(ProviderConfig, {"name": name, **spec}, where)
    return providers


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Load and validate the config; with no file, the embedded defaults."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded or {}
    raw = interpolate(raw)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    if "scanner" in raw:
        raise ConfigError("scanner: this section is now called guards (same keys: enabled, disabled_rules)")
    providers = _providers(raw.pop("providers", None))
    teams = parse_teams(raw.pop("teams", None))
    users = parse_users(raw.pop("users", None), teams)
    keys = parse_keys(raw.pop("keys", None), teams, users)
    config: GatewayConfig = build(GatewayConfig, raw)
    if config.policy.guards is not None and config.policy.guards.bypass:
        raise ConfigError("policy.guards.bypass: only a key can bypass the guards (use guards.enabled)")
    try:
        load_table(config.pricing.file, config.pricing.models)
    except PricingError as exc:
        raise ConfigError(str(exc)) from None
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: one of debug, info, warning, error; got {config.log_level!r}")
    return dataclasses.replace(config, providers=providers, teams=teams, users=users, keys=keys)
