"""Every ClickHouse query in dashboards/*.json, with the grafana-clickhouse-datasource macros expanded,
runs against the gateway's chDB audit store filled by real SDK requests and returns rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from gateway.config import GatewayConfig
from gateway.telemetry.setup import Telemetry, build_telemetry
from tests.telemetry.dashboards_support import (
    GatewayThread,
    PanelQuery,
    TimeRange,
    VariableQuery,
    drive_traffic,
    expand_clickhouse,
    load_dashboards,
    panel_queries,
    variable_queries,
)
from tests.telemetry.otlp_decoded import DecodingSender

PANELS = panel_queries("clickhouse")
VARIABLES = variable_queries("clickhouse")


@dataclasses.dataclass
class AuditedGateway:
    gateway: GatewayThread
    telemetry: list[Telemetry]
    spans: DecodingSender
    span: TimeRange  # the dashboard time range the queries run over

    def run(self, sql: str) -> list[dict[str, object]]:
        return self.gateway.query(sql)

    def variable_values(self, dashboard: str) -> dict[str, list[str]]:
        """Each template variable of a dashboard at "All": every value its query returns."""
        values: dict[str, list[str]] = {}
        for variable in load_dashboards()[dashboard].get("templating", {}).get("list", ()):
            if variable["type"] == "textbox":
                values[variable["name"]] = [variable.get("query", "")]
            elif variable["type"] == "query" and variable["datasource"]["uid"] == "clickhouse":
                rows = self.run(expand_clickhouse(variable["query"], self.span, values))
                values[variable["name"]] = [str(next(iter(row.values()))) for row in rows]
        return values


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedGateway]:
    """A gateway whose audit store holds one round of every kind of exchange, with trace ids."""
    spans = DecodingSender()
    built: list[Telemetry] = []

    def traced(config: GatewayConfig) -> Telemetry:
        built.append(build_telemetry(config, env={}, span_sender=spans))
        return built[-1]

    gateway = GatewayThread(tmp_path_factory.mktemp("dashboards-clickhouse"), traced)
    try:
        gateway.run(drive_traffic(gateway.gateway))
        gateway.run(gateway.gateway.writer.flush())
        yield AuditedGateway(gateway, built, spans, TimeRange.last(600))
    finally:
        gateway.close()


@pytest.mark.parametrize("query", PANELS, ids=[q.name for q in PANELS])
def test_panel_query_returns_rows(audited: AuditedGateway, query: PanelQuery) -> None:
    sql = expand_clickhouse(query.text, audited.span, audited.variable_values(query.dashboard))
    rows = audited.run(sql)
    assert rows, f"no rows for\n{sql}"


@pytest.mark.parametrize("variable", VARIABLES, ids=[v.name for v in VARIABLES])
def test_template_variable_has_values(audited: AuditedGateway, variable: VariableQuery) -> None:
    assert audited.variable_values(variable.dashboard)[variable.variable]


def test_the_time_filter_excludes_rows_outside_the_range(audited: AuditedGateway) -> None:
    """The macros are expanded for real: a range before the traffic finds nothing."""
    query = next(q for q in PANELS if q.panel == "Recent requests")
    before = TimeRange(audited.span.from_ms - 3_600_000, audited.span.from_ms - 1_800_000)
    sql = expand_clickhouse(query.text, before, audited.variable_values(query.dashboard))
    assert audited.run(sql) == []


def test_recent_requests_link_to_traces_the_gateway_made(audited: AuditedGateway) -> None:
    query = next(q for q in PANELS if q.panel == "Recent requests")
    rows = audited.run(expand_clickhouse(query.text, audited.span, audited.variable_values(query.dashboard)))
    for telemetry in audited.telemetry:
        assert telemetry.tracer_provider is not None and telemetry.tracer_provider.force_flush(5_000)
    traced = {format(s.trace_id, "032x") for s in audited.spans.spans()}
    linked = {row["trace_id"] for row in rows}
    assert linked and linked <= traced, f"trace ids in the table without a trace: {linked - traced}"
    assert all(row["request_id"] for row in rows)


def test_the_request_variable_finds_one_request(audited: AuditedGateway) -> None:
    query = next(q for q in PANELS if q.panel == "Recent requests")
    values = audited.variable_values(query.dashboard)
    some = audited.run(expand_clickhouse(query.text, audited.span, values))[0]
    for key in ("request_id", "trace_id"):
        found = audited.run(
            expand_clickhouse(query.text, audited.span, {**values, "request": [str(some[key])]})
        )
        assert [row["request_id"] for row in found] == [some["request_id"]]


def test_every_clickhouse_dashboard_is_checked() -> None:
    assert {q.dashboard for q in PANELS} == {"audit-explorer.json", "security.json"}


def test_expanded_macros_match_the_plugin_docs() -> None:
    span = TimeRange(1_415_792_726_123, 1_447_328_726_456, interval_s=20)
    sql = (
        "SELECT $__timeInterval(ts), $__timeInterval_ms(ts) WHERE $__timeFilter(ts) AND $__timeFilter_ms(ts) "
        "AND x BETWEEN $__fromTime AND $__toTime AND $__conditionalAll(p IN (${p:singlequote}), $p) "
        "AND q = '$q' AND i = $__interval_s"
    )
    assert expand_clickhouse(sql, span, {"p": ["a", "b'c"], "q": [""]}) == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 20 second), "
        "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 20000 millisecond) "
        "WHERE ts >= toDateTime(1415792726) AND ts <= toDateTime(1447328727) "
        "AND ts >= fromUnixTimestamp64Milli(1415792726123) AND ts <= fromUnixTimestamp64Milli(1447328726456) "
        "AND x BETWEEN toDateTime(1415792726) AND toDateTime(1447328727) AND (p IN ('a', 'b\\'c')) "
        "AND q = '' AND i = 20"
    )
