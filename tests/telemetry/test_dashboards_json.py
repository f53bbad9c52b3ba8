"""The dashboards as Grafana JSON: well formed, on the provisioned datasources, and written against
the telemetry contract (series and label names, time macros). Cheap: no server runs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.telemetry.dashboards_support import (
    DATASOURCE_TYPES,
    all_panels,
    datasource_uid,
    load_dashboards,
    panel_queries,
)

DASHBOARDS = load_dashboards()
PROMQL = panel_queries("prometheus")
SQL = panel_queries("clickhouse")
METRIC = re.compile(r"\b(?:gen_ai_|llm_gateway_|http_server_|target_info)\w*")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
WINDOW = re.compile(r"\[([^\]]+)\]")


# -- the telemetry contract the dashboards are written against -----------------------------------

# Prometheus series the gateway exposes (README "Telemetry"), each with the labels it carries.
_GEN_AI = {
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
    "error_type",
}
_HISTOGRAM = ("_bucket", "_sum", "_count")
CONTRACT: dict[str, set[str]] = {
    **{f"gen_ai_client_token_usage{s}": _GEN_AI | {"gen_ai_token_type"} for s in _HISTOGRAM},
    **{f"gen_ai_client_operation_duration_seconds{s}": set(_GEN_AI) for s in _HISTOGRAM},
    **{f"gen_ai_client_operation_time_to_first_chunk_seconds{s}": set(_GEN_AI) for s in _HISTOGRAM},
    **{f"llm_gateway_time_per_output_token_seconds{s}": set(_GEN_AI) for s in _HISTOGRAM},
    **{
        f"http_server_request_duration_seconds{s}": {
            "http_request_method",
            "http_response_status_code",
            "http_route",
            "error_type",
        }
        for s in _HISTOGRAM
    },
    "llm_gateway_requests_total": {
        "provider",
        "operation",
        "model",
        "outcome",
        "status_class",
        "stream",
        "team",
        "key_id",
    },
    "llm_gateway_tokens_total": {"provider", "model", "token_type", "team", "key_id"},
    **{f"llm_gateway_overhead_seconds{s}": {"provider", "operation", "stream"} for s in _HISTOGRAM},
    "llm_gateway_upstream_errors_total": {"provider", "error_type"},
    "llm_gateway_active_streams": {"provider"},
    "llm_gateway_active_requests": {"provider"},
    "llm_gateway_traffic_bytes_total": {"provider", "direction"},
    "llm_gateway_scanner_findings_total": {"rule", "category", "severity", "location", "action"},
    "llm_gateway_audit_queue_depth": set(),
    "llm_gateway_audit_spool_backlog": set(),
    "llm_gateway_audit_records_total": {"state"},
    "target_info": {"service_name", "service_version", "service_instance_id"},
}
for _name, _labels in CONTRACT.items():
    _labels.update({"job", "instance"} | ({"le"} if _name.endswith("_bucket") else set()))


def test_the_four_dashboards_exist_with_unique_uids() -> None:
    assert set(DASHBOARDS) == {
        "gateway-overview.json",
        "usage-cost.json",
        "security.json",
        "audit-explorer.json",
    }
    uids = [d.get("uid") for d in DASHBOARDS.values()]
    assert all(uids) and len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]
        refs = [t["refId"] for t in panel.get("targets", ())]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_datasource_is_a_provisioned_one(name: str) -> None:
    dashboard = DASHBOARDS[name]
    sources: list[tuple[str, Any]] = [
        (f"${v['name']}", v.get("datasource")) for v in dashboard["templating"]["list"]
    ]
    for panel in all_panels(dashboard):
        if panel["type"] in ("row", "text"):
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel.get("targets"), f"{panel['title']} has no query"
        sources.append((panel["title"], panel.get("datasource")))
        for target in panel["targets"]:
            sources.append((f"{panel['title']} / {target['refId']}", target.get("datasource")))
            assert datasource_uid(target, panel) in DATASOURCE_TYPES
    for where, source in sources:
        if source is None:
            continue
        assert source["uid"] in DATASOURCE_TYPES, (where, source)
        assert source["type"] == DATASOURCE_TYPES[source["uid"]], (where, source)


@pytest.mark.parametrize("query", PROMQL, ids=[q.name for q in PROMQL])
def test_promql_uses_contract_series_labels_and_windows(query: Any) -> None:
    bare = GROUPING.sub("", re.sub(r'\{[^}]*\}|"[^"]*"', "", query.text))  # series names only
    metrics = set(METRIC.findall(bare))
    assert metrics, "no gateway series in the query"
    unknown = metrics - set(CONTRACT)
    assert not unknown, f"not in the telemetry contract: {unknown}"
    known = set().union(*(CONTRACT[m] for m in metrics))
    for selector in re.findall(r"\{([^}]*)\}", query.text):
        labels = set(MATCHER.findall(selector))
        assert labels <= known, f"labels {labels - known} are not on {metrics}"
    for grouping in GROUPING.findall(query.text):
        labels = {label.strip() for label in grouping.split(",") if label.strip()}
        assert labels <= known, f"grouping by {labels - known}, not on {metrics}"
    for window in WINDOW.findall(query.text):
        assert window in ("$__rate_interval", "$__range"), f"fixed window [{window}]; use $__rate_interval"


@pytest.mark.parametrize("query", SQL, ids=[q.name for q in SQL])
def test_sql_reads_the_audit_table_within_the_dashboard_time_range(query: Any) -> None:
    assert "FROM llm_gateway.audit_log" in query.text
    assert "$__timeFilter(ts)" in query.text, "every audit query follows the time picker"


def test_dashboard_variables_are_defined_where_used() -> None:
    for name, dashboard in DASHBOARDS.items():
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        for query in PROMQL + SQL:
            if query.dashboard == name:
                used = set(re.findall(r"\$\{?(?!__)(\w+)", query.text))
                assert used <= defined, f"{query.name} uses undefined {used - defined}"


def test_trace_ids_link_to_the_jaeger_datasource() -> None:
    for name in ("audit-explorer.json", "security.json"):
        links = [
            link
            for panel in all_panels(DASHBOARDS[name])
            for override in panel.get("fieldConfig", {}).get("overrides", ())
            if override["matcher"]["options"] == "trace_id"
            for prop in override["properties"]
            if prop["id"] == "links"
            for link in prop["value"]
        ]
        assert links, f"no trace_id link in {name}"
        for link in links:
            assert '"datasource":"jaeger"' in link["url"] and "${__value.raw}" in link["url"]


def test_no_query_needs_cost_metrics_yet() -> None:
    """Spend arrives with cost tracking; until then a text panel says so and no query asks for cost."""
    assert not [q.name for q in PROMQL + SQL if "cost" in q.text.lower()]
    texts = [p for p in all_panels(DASHBOARDS["usage-cost.json"]) if p["type"] == "text"]
    assert any("cost tracking" in p["options"]["content"] for p in texts)
