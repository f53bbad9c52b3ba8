"""The CLI's reads: tail and show, direct on the store, through the writer, and through JSON."""

from __future__ import annotations

import datetime as dt

import orjson

from gateway.audit import queries
from gateway.audit.queries import AuditFilters
from gateway.audit.record import Outcome
from gateway.audit.schema import normalize_row
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter
from tests.audit.support import BASE_TS, make_record

RECORDS = [
    make_record(i, team="research" if i % 2 else "ops", outcome=Outcome.OK if i % 3 else Outcome.REJECTED)
    for i in range(12)
]


def fill(store: AuditStore) -> None:
    store.insert([normalize_row(r.to_row()) for r in RECORDS], token="fill")


def test_tail_returns_the_latest_oldest_first(store: AuditStore) -> None:
    fill(store)
    tail = queries.tail(store.query, store.settings, limit=3)
    assert tail == RECORDS[-3:]


def test_tail_filters(store: AuditStore) -> None:
    fill(store)
    run, settings = store.query, store.settings
    research = queries.tail(run, settings, 100, AuditFilters(team="research"))
    assert [r.request_id for r in research] == [r.request_id for r in RECORDS if r.team == "research"]
    rejected = queries.tail(run, settings, 100, AuditFilters(team="ops", outcome="rejected"))
    assert rejected == [r for r in RECORDS if r.team == "ops" and r.outcome is Outcome.REJECTED]
    window = AuditFilters(
        since=BASE_TS + dt.timedelta(milliseconds=4), until=BASE_TS + dt.timedelta(milliseconds=7)
    )
    assert [r.request_id for r in queries.tail(run, settings, 100, window)] == [
        "req-000004",
        "req-000005",
        "req-000006",
    ]
    assert queries.tail(run, settings, 100, AuditFilters(model="no-such-model")) == []


def test_show_finds_one_request(store: AuditStore) -> None:
    fill(store)
    assert queries.show(store.query, store.settings, "req-000005") == RECORDS[5]
    assert queries.show(store.query, store.settings, "req-missing") is None


def test_filter_values_are_parameters_not_sql(store: AuditStore) -> None:
    fill(store)
    hostile = AuditFilters(team="x' OR 1=1 --")
    assert queries.tail(store.query, store.settings, 100, hostile) == []
    query = queries.tail_query(store.settings, 5, hostile)
    assert "OR 1=1" not in query.sql


async def test_reads_through_the_running_writer_and_json(settings: AuditSettings) -> None:
    writer = AuditWriter(settings)
    await writer.start()
    try:
        for record in RECORDS:
            writer.submit(record)
        await writer.flush()
        query = queries.show_query(settings, "req-000007")
        # what an admin endpoint would do: JSON in, run on the writer's thread, JSON out
        parameters = orjson.loads(orjson.dumps(query.parameters))
        rows = orjson.loads(orjson.dumps(await writer.query(query.sql, parameters)))
        assert queries.records(rows) == [RECORDS[7]]
        tail_query = queries.tail_query(settings, 2, AuditFilters(since=BASE_TS))
        rows = await writer.query(tail_query.sql, orjson.loads(orjson.dumps(tail_query.parameters)))
        assert queries.records(rows) == RECORDS[:-3:-1]  # newest first, as the SQL sorts
    finally:
        await writer.close()
