"""The read side for the CLI and admin endpoints: parameterized SQL over the audit table.

Each query is built as SQL with `{name:Type}` placeholders plus JSON-safe parameters, so it
runs unchanged through `AuditStore.query` (no gateway running), `AuditWriter.query` (inside
the gateway) or a JSON admin endpoint in between; `records()` turns the rows back into
`AuditRecord`s (from_row accepts ISO strings for `ts`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.audit.schema import COLUMN_NAMES
from gateway.audit.settings import AuditSettings

QueryRunner = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]

_SELECT = ", ".join(f"`{name}`" for name in COLUMN_NAMES)
# AuditFilters field -> column it must equal
_EQUALS: dict[str, str] = {
    "team": "team",
    "key_id": "key_id",
    "user": "user",
    "provider": "provider",
    "model": "requested_model",
    "outcome": "outcome",
}
_TS = "DateTime64(3, 'UTC')"


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """Narrow a tail: each set field must match exactly; `since`/`until` bound `ts` (until exclusive)."""

    team: str | None = None
    key_id: str | None = None
    user: str | None = None
    provider: str | None = None
    model: str | None = None  # the requested model
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """SQL with server-side placeholders and its JSON-safe parameters."""

    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)


def _timestamp_parameter(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def tail_query(settings: AuditSettings, limit: int = 20, filters: AuditFilters | None = None) -> AuditQuery:
    """The `limit` most recent exchanges matching `filters` (newest first; `tail` reverses them)."""
    filters = filters or AuditFilters()
    conditions: list[str] = []
    parameters: dict[str, Any] = {"limit": max(int(limit), 0)}
    for name, column in _EQUALS.items():
        value = getattr(filters, name)
        if value is not None:
            conditions.append(f"`{column}` = {{{name}:String}}")
            parameters[name] = str(value)
    if filters.since is not None:
        conditions.append(f"`ts` >= {{since:{_TS}}}")
        parameters["since"] = _timestamp_parameter(filters.since)
    if filters.until is not None:
        conditions.append(f"`ts` < {{until:{_TS}}}")
        parameters["until"] = _timestamp_parameter(filters.until)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        f"SELECT {_SELECT} FROM {settings.qualified_table}{where} "
        "ORDER BY `ts` DESC, `request_id` DESC LIMIT {limit:UInt32}"
    )
    return AuditQuery(sql, parameters)


def show_query(settings: AuditSettings, request_id: str) -> AuditQuery:
    """The exchange with this request id (the response's request-id header)."""
    sql = (
        f"SELECT {_SELECT} FROM {settings.qualified_table} "
        "WHERE `request_id` = {request_id:String} ORDER BY `ts` LIMIT 1"
    )
    return AuditQuery(sql, {"request_id": request_id})


def records(rows: Sequence[Mapping[str, Any]]) -> list[AuditRecord]:
    """AuditRecords from rows of a tail or show query."""
    return [AuditRecord.from_row(dict(row)) for row in rows]


def tail(
    run: QueryRunner, settings: AuditSettings, limit: int = 20, filters: AuditFilters | None = None
) -> list[AuditRecord]:
    """The most recent exchanges, oldest first; `run` is e.g. `AuditStore.query`."""
    query = tail_query(settings, limit, filters)
    return records(run(query.sql, query.parameters))[::-1]


def show(run: QueryRunner, settings: AuditSettings, request_id: str) -> AuditRecord | None:
    """One exchange by request id, or None."""
    query = show_query(settings, request_id)
    found = records(run(query.sql, query.parameters))
    return found[0] if found else None


SPEND_GROUPS: dict[str, str] = {  # --by value -> column
    "team": "team",
    "user": "user",
    "key": "key_id",
    "model": "requested_model",
    "provider": "provider",
}


def spend_query(
    settings: AuditSettings, by: str, since: dt.datetime, filters: AuditFilters | None = None
) -> AuditQuery:
    """Spend, requests and tokens per team, user, key, model or provider since `since`, costliest first.

    `cost_usd` sums what was priced; `unpriced` counts requests that used tokens of a model
    with no known price (their cost is unknown, not zero).
    """
    column = SPEND_GROUPS.get(by)
    if column is None:
        raise ValueError(f"spend by: one of {', '.join(SPEND_GROUPS)}, got {by!r}")
    filters = dataclasses.replace(filters or AuditFilters(), since=since)
    conditions: list[str] = []
    parameters: dict[str, Any] = {}
    for name, col in _EQUALS.items():
        value = getattr(filters, name)
        if value is not None:
            conditions.append(f"`{col}` = {{{name}:String}}")
            parameters[name] = str(value)
    conditions.append(f"`ts` >= {{since:{_TS}}}")
    parameters["since"] = _timestamp_parameter(since)
    if filters.until is not None:
        conditions.append(f"`ts` < {{until:{_TS}}}")
        parameters["until"] = _timestamp_parameter(filters.until)
    sql = (
        f"SELECT `{column}` AS `{by}`, count() AS requests, "
        "sum(ifNull(`input_tokens`, 0)) AS input_total, sum(ifNull(`output_tokens`, 0)) AS output_total, "
        "toString(sum(ifNull(`cost_usd`, toDecimal64(0, 9)))) AS spend_usd, "
        "countIf(`cost_usd` IS NULL AND (`input_tokens` IS NOT NULL OR `output_tokens` IS NOT NULL)) "
        "AS unpriced "
        f"FROM {settings.qualified_table} WHERE {' AND '.join(conditions)} "
        f"GROUP BY `{by}` ORDER BY toDecimal64(spend_usd, 9) DESC, requests DESC, `{by}`"
    )
    return AuditQuery(sql, parameters)


def spend_since_query(settings: AuditSettings, day: dt.datetime, month: dt.datetime) -> AuditQuery:
    """Priced spend per caller and model for the day and the month that started at `day`/`month`
    (the budgets' rebuild after a restart)."""
    sql = (
        "SELECT `key_id`, `user`, `team`, `provider`, `requested_model` AS model, "
        f"toString(sumIf(ifNull(`cost_usd`, toDecimal64(0, 9)), `ts` >= {{day:{_TS}}})) AS day_usd, "
        "toString(sum(ifNull(`cost_usd`, toDecimal64(0, 9)))) AS month_usd "
        f"FROM {settings.qualified_table} WHERE `ts` >= {{month:{_TS}}} "
        "GROUP BY `key_id`, `user`, `team`, `provider`, `requested_model`"
    )
    return AuditQuery(sql, {"day": _timestamp_parameter(day), "month": _timestamp_parameter(month)})
