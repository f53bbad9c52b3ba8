"""Typed `limits:` settings: rate limits (rpm, tpm, concurrency) and USD budgets, as rules."""

from __future__ import annotations

import fnmatch
import zoneinfo
from dataclasses import dataclass, field

from gateway.auth.keys import KEY_ID

SCOPES = ("key", "user", "team", "model", "global")
ON_STATE_ERROR = ("open", "closed")


@dataclass(frozen=True, slots=True)
class LimitMatch:
    """Which requests a rule counts: glob patterns per attribute; an empty list matches all."""

    teams: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def matches(self, team: str, user: str, key: str, provider: str, model: str) -> bool:
        for patterns, value in (
            (self.teams, team),
            (self.users, user),
            (self.keys, key),
            (self.providers, provider),
            (self.models, model),
        ):
            if patterns and not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One rule: a counter per `scope` value (per key, user, team, model, or one global one).

    `per_model` splits the counter by requested model too. Rates are per minute over a sliding
    window (at most `rpm` requests and `tpm` input+output tokens in any 60 s); `concurrent` caps
    requests in flight; `daily_usd` / `monthly_usd` are calendar budgets in `limits.timezone`,
    with a warning (metric + audit flag) at `warn_percent` of either.
    """

    name: str
    scope: str = "key"
    match: LimitMatch = field(default_factory=LimitMatch)
    per_model: bool = False
    rpm: int = 0
    tpm: int = 0
    concurrent: int = 0
    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    warn_percent: float = 0.0

    def __post_init__(self) -> None:
        if not KEY_ID.match(self.name):
            raise ValueError(f"limit rule names are 1-64 characters of [A-Za-z0-9_.-], got {self.name!r}")
        if self.scope not in SCOPES:
            raise ValueError(
                f"rule {self.name}: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"
            )
        if not (self.rpm or self.tpm or self.concurrent or self.daily_usd or self.monthly_usd):
            raise ValueError(
                f"rule {self.name}: sets no limit (rpm, tpm, concurrent, daily_usd or monthly_usd)"
            )
        if self.warn_percent and not (self.daily_usd or self.monthly_usd):
            raise ValueError(f"rule {self.name}: warn_percent needs daily_usd or monthly_usd")
        if not 0 <= self.warn_percent <= 100:
            raise ValueError(f"rule {self.name}: warn_percent is between 0 and 100")

    @property
    def has_budget(self) -> bool:
        return bool(self.daily_usd or self.monthly_usd)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """`on_state_error`: what a request gets while the state store (Redis) is unreachable —
    `open` (allowed, with a warning metric and an audit flag) or `closed` (a provider-shaped 503).
    `default_output_tokens` is reserved for a request that sets no output cap. A reservation a
    replica never settles (it died) expires after `reservation_ttl_s`.
    """

    rules: tuple[LimitRule, ...] = ()
    timezone: str = "UTC"
    on_state_error: str = "open"
    default_output_tokens: int = 4096
    reservation_ttl_s: float = 900.0

    def __post_init__(self) -> None:
        if self.on_state_error not in ON_STATE_ERROR:
            raise ValueError(f"on_state_error must be open or closed, got {self.on_state_error!r}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None
        names = [r.name for r in self.rules]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate rule name(s): {', '.join(duplicates)}")
        if self.reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be positive")
