"""Which limits apply to a request, what it is expected to use, and settling what it did use.

Before the call: every matching rule contributes its checks (rpm, tpm, concurrency, daily and
monthly budget) and all of them are checked and reserved at once (gateway/limits/counters.py).
Tokens are estimated from the request's text (about four characters a token) plus its output
cap; cost from those tokens at the model's price. After the call the reservations are replaced
by the actual tokens and cost, and the in-flight lease released.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.audit.record import Usage
from gateway.errors import ErrorCode, GatewayError
from gateway.limits.counters import BUDGET, LEASE, WINDOW, Check, Counters, Settle, StateUnavailable
from gateway.limits.settings import LimitRule, LimitsSettings
from gateway.pricing.table import NANO, PriceTable, normalize_model
from gateway.providers.base import RequestView

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
FLAG_FAIL_OPEN = "limits.fail_open"
FLAG_COST_UNKNOWN = "cost.unknown"


def nano(dollars: Decimal | float) -> int:
    return int((Decimal(str(dollars)) / NANO).to_integral_value())


def usd(nanos: int) -> str:
    """Nano-USD for a message, to the micro-dollar: 0.012345."""
    return f"{(Decimal(nanos) * NANO).quantize(Decimal('0.000001')).normalize():f}"


@dataclass(frozen=True, slots=True)
class Planned:
    """One check with what it means: its rule, the metric and a message if it fails."""

    check: Check
    rule: LimitRule
    metric: str  # rpm | tpm | concurrent | daily_usd | monthly_usd
    reset_ms: int = 0  # budgets: until the period ends
    warn_at: int = 0  # budgets: nano-USD at which the soft limit warns


@dataclass(slots=True)
class Reservation:
    """What one request holds until it settles."""

    request_id: str
    planned: tuple[Planned, ...]
    tokens: int
    cost: int  # nano-USD
    flags: list[str] = field(default_factory=list)
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Caller:
    request_id: str
    provider: str
    kind: str
    key_id: str
    user: str
    team: str


class Limiter:
    def __init__(self, settings: LimitsSettings, pricing: PriceTable, counters: Counters) -> None:
        self.settings = settings
        self.pricing = pricing
        self.counters = counters
        self.zone = zoneinfo.ZoneInfo(settings.timezone)
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.rules)

    # -- estimates ----------------------------------------------------------------------------------

    def estimate_tokens(self, view: RequestView) -> tuple[int, int]:
        """(input, output) tokens a request may use: text/4 rounded up, and its output cap."""
        if not view.endpoint.gen_ai_operation:
            return 0, 0
        chars = sum(len(t.text) for t in view.scan_targets())
        input_tokens = math.ceil(chars / 4)
        if view.endpoint.gen_ai_operation == "embeddings":
            return input_tokens, 0
        cap = view.params.get("max_tokens")
        output = cap if isinstance(cap, int) and cap > 0 else self.settings.default_output_tokens
        return input_tokens, output

    # -- before the call --------------------------------------------------------------------------

    def plan(self, caller: Caller, view: RequestView, tokens: int, cost: int) -> tuple[Planned, ...]:
        model = normalize_model(view.model)
        now = dt.datetime.now(self.zone)
        planned: list[Planned] = []
        ttl = int(self.settings.reservation_ttl_s * 1000)
        for rule in self.settings.rules:
            if not rule.match.matches(caller.team, caller.user, caller.key_id, caller.provider, model):
                continue
            value = {
                "key": caller.key_id,
                "user": caller.user,
                "team": caller.team,
                "model": model,
                "global": "*",
            }[rule.scope]
            if not value:
                continue  # e.g. a per-key rule and a caller without a gateway key
            base = f"{rule.name}:{rule.scope}:{value}" + (f":{model}" if rule.per_model and model else "")
            if rule.rpm:
                planned.append(Planned(Check(WINDOW, f"{base}:rpm", rule.rpm, MINUTE_MS, 1), rule, "rpm"))
            if rule.tpm:
                planned.append(
                    Planned(Check(WINDOW, f"{base}:tpm", rule.tpm, MINUTE_MS, tokens), rule, "tpm")
                )
            if rule.concurrent:
                planned.append(
                    Planned(Check(LEASE, f"{base}:conc", rule.concurrent, ttl, 1), rule, "concurrent")
                )
            for metric, cap, period, reset in (
                ("daily_usd", rule.daily_usd, f"d{now:%Y%m%d}", _next_day(now)),
                ("monthly_usd", rule.monthly_usd, f"m{now:%Y%m}", _next_month(now)),
            ):
                if cap:
                    limit = nano(cap)
                    planned.append(
                        Planned(
                            Check(BUDGET, f"{base}:{period}", limit, ttl, cost),
                            rule,
                            metric,
                            reset_ms=int((reset - now).total_seconds() * 1000),
                            warn_at=int(limit * rule.warn_percent / 100) if rule.warn_percent else 0,
                        )
                    )
        return tuple(planned)

    async def reserve(self, caller: Caller, view: RequestView) -> Reservation | None:
        """Check and reserve every matching limit, or raise the provider-shaped 429 (or 503)."""
        input_tokens, output_tokens = self.estimate_tokens(view)
        tokens = input_tokens + output_tokens
        price = self.pricing.estimate(caller.provider, caller.kind, view.model, input_tokens, output_tokens)
        cost = nano(price) if price is not None else 0
        planned = self.plan(caller, view, tokens, cost)
        if not planned:
            return None
        reservation = Reservation(caller.request_id, planned, tokens, cost)
        try:
            verdict = await self.counters.reserve(caller.request_id, [p.check for p in planned])
        except StateUnavailable as exc:
            if self.settings.on_state_error == "closed":
                raise GatewayError(
                    ErrorCode.UNAVAILABLE,
                    "rate limits and budgets cannot be checked right now (state store unreachable); "
                    "retry shortly",
                    rule="limits.state_unavailable",
                ) from exc
            log.warning("limits not enforced for %s: %s (on_state_error: open)", caller.request_id, exc)
            reservation.flags.append(FLAG_FAIL_OPEN)
            reservation.settled = True  # nothing was reserved
            return reservation
        if not verdict.ok:
            raise self._rejection(planned[verdict.failed], verdict.retry_after_ms, verdict.used, tokens)
        for p, used in zip(planned, verdict.used, strict=False):
            if p.warn_at and used + p.check.amount >= p.warn_at:
                reservation.flags.append(f"budget.warn:{p.rule.name}.{p.metric}")
        return reservation

    def _rejection(self, p: Planned, retry_ms: int, used: Sequence[int], tokens: int) -> GatewayError:
        rule = f"limits.{p.rule.name}.{p.metric}"
        c = p.check
        if c.kind == BUDGET:
            period = "daily" if p.metric == "daily_usd" else "monthly"
            message = (
                f"{period} budget of ${usd(c.limit)} for {p.rule.scope} rule '{p.rule.name}' is exhausted "
                f"(spent and reserved ${usd(used[-1] if used else 0)}, this request needs up to "
                f"${usd(c.amount)})"
            )
            return GatewayError(
                ErrorCode.BUDGET_EXCEEDED,
                message,
                rule=rule,
                headers={"retry-after": str(max(math.ceil(p.reset_ms / 1000), 1))},
            )
        seconds = max(math.ceil(retry_ms / 1000), 1)
        if p.metric == "concurrent":
            message = f"too many requests in flight: rule '{p.rule.name}' allows {c.limit} at once"
        elif p.metric == "rpm":
            message = f"rate limit of {c.limit} requests per minute reached (rule '{p.rule.name}')"
        else:
            message = (
                f"rate limit of {c.limit} tokens per minute reached (rule '{p.rule.name}'; "
                f"this request reserves {tokens})"
            )
        return GatewayError(
            ErrorCode.RATE_LIMITED,
            f"{message}; retry after {seconds}s",
            rule=rule,
            headers={"retry-after": str(seconds), "retry-after-ms": str(max(retry_ms, 1))},
            rate_limit=(p.metric, c.limit, seconds),
        )

    # -- after the call ---------------------------------------------------------------------------

    def settle_soon(
        self, reservation: Reservation, usage: Usage, cost: Decimal | None, answered: bool
    ) -> None:
        """Settle in the background: the response is already on its way to the client."""
        if reservation.settled:
            return
        reservation.settled = True
        task = asyncio.get_running_loop().create_task(self._settle(reservation, usage, cost, answered))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def settle_ops(
        self, reservation: Reservation, usage: Usage, cost: Decimal | None, answered: bool
    ) -> list[Settle]:
        """The actual tokens and cost replace the estimates. An answered call with unknown usage
        keeps its estimates (the provider billed something); a call never answered costs nothing."""
        if usage.input_tokens is not None or usage.output_tokens is not None:
            tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
        else:
            tokens = reservation.tokens if answered else 0
        spent = nano(cost) if cost is not None else (reservation.cost if answered else 0)
        ops = []
        for p in reservation.planned:
            c = p.check
            if p.metric == "tpm":
                ops.append(Settle(WINDOW, c.key, c.amount, tokens))
            elif c.kind == LEASE:
                ops.append(Settle(LEASE, c.key, c.amount, 0))
            elif c.kind == BUDGET:
                ops.append(Settle(BUDGET, c.key, c.amount, spent, keep_ms=p.reset_ms + 86_400_000))
        return ops

    async def _settle(
        self, reservation: Reservation, usage: Usage, cost: Decimal | None, answered: bool
    ) -> None:
        ops = self.settle_ops(reservation, usage, cost, answered)
        try:
            await self.counters.settle(reservation.request_id, ops)
        except StateUnavailable as exc:
            log.warning(
                "could not settle limits of %s: %s (reservations expire)", reservation.request_id, exc
            )
        except Exception:
            log.exception("settling limits of %s failed", reservation.request_id)

    async def drain(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self.counters.close()

    # -- rebuilt from the audit log ---------------------------------------------------------------

    def period_starts(self) -> tuple[dt.datetime, dt.datetime]:
        now = dt.datetime.now(self.zone)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day, day.replace(day=1)

    async def restore(self, rows: Sequence[dict[str, object]]) -> int:
        """Raise budget counters to the spend the audit log shows for this day and month.

        `rows`: key_id, user, team, provider, model, day_usd, month_usd (grouped sums).
        """
        now = dt.datetime.now(self.zone)
        totals: dict[tuple[str, int], int] = {}
        for rule in self.settings.rules:
            if not rule.has_budget:
                continue
            for row in rows:
                key_id, user, team = str(row["key_id"]), str(row["user"]), str(row["team"])
                model = normalize_model(str(row["model"]))
                if not rule.match.matches(team, user, key_id, str(row["provider"]), model):
                    continue
                value = {"key": key_id, "user": user, "team": team, "model": model, "global": "*"}[rule.scope]
                if not value:
                    continue
                base = f"{rule.name}:{rule.scope}:{value}" + (f":{model}" if rule.per_model and model else "")
                if rule.daily_usd:
                    k = (f"{base}:d{now:%Y%m%d}", int((_next_day(now) - now).total_seconds() * 1000))
                    totals[k] = totals.get(k, 0) + nano(Decimal(str(row["day_usd"] or 0)))
                if rule.monthly_usd:
                    k = (f"{base}:m{now:%Y%m}", int((_next_month(now) - now).total_seconds() * 1000))
                    totals[k] = totals.get(k, 0) + nano(Decimal(str(row["month_usd"] or 0)))
        for (key, reset_ms), spent in totals.items():
            if spent:
                await self.counters.restore(key, spent, reset_ms + 86_400_000)
        return len([s for s in totals.values() if s])


def _next_day(now: dt.datetime) -> dt.datetime:
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (start + dt.timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe


def _next_month(now: dt.datetime) -> dt.datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + dt.timedelta(days=32)).replace(day=1)
