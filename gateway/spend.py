"""Spend reports from the audit log: `llm-gateway spend` and `GET /admin/spend` share this."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateway.audit.queries import SPEND_GROUPS, AuditFilters, spend_query
from gateway.audit.settings import AuditSettings

_AGO = re.compile(r"^(\d+)\s*([mhdw])$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FILTERS = ("team", "user", "key_id", "provider", "model")


class SpendRequestError(ValueError):
    """A bad --by / --since / filter; the message is for the user."""


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """`7d`, `24h`, `30m`, `2w` ago, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    now = now or dt.datetime.now(dt.UTC)
    text = value.strip()
    if m := _AGO.match(text):
        return now - dt.timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SpendRequestError(
            f"since: use a duration (7d, 24h, 30m) or an ISO date, got {value!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def spend_sql(
    settings: AuditSettings, by: str, since: str, filters: Mapping[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The report's (sql, parameters), validated; run it with any of the audit query runners."""
    if by not in SPEND_GROUPS:
        raise SpendRequestError(f"by: one of {', '.join(SPEND_GROUPS)}, got {by!r}")
    unknown = set(filters or {}) - set(FILTERS)
    if unknown:
        raise SpendRequestError(
            f"unknown filter(s) {', '.join(sorted(unknown))} (known: {', '.join(FILTERS)})"
        )
    start = parse_since(since)
    given = dict(filters or {})
    query = spend_query(
        settings,
        by,
        start,
        AuditFilters(
            team=given.get("team"),
            user=given.get("user"),
            key_id=given.get("key_id"),
            provider=given.get("provider"),
            model=given.get("model"),
        ),
    )
    return query.sql, query.parameters


def report_body(by: str, since: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    total = Decimal(0)
    for row in rows:
        cost = Decimal(str(row["spend_usd"]))
        total += cost
        out.append(
            {
                by: row[by],
                "requests": int(row["requests"]),
                "input_tokens": int(row["input_total"]),
                "output_tokens": int(row["output_total"]),
                "cost_usd": f"{cost:f}",
                "unpriced_requests": int(row["unpriced"]),
            }
        )
    return {"by": by, "since": parse_since(since).isoformat(), "rows": out, "total_usd": f"{total:f}"}
