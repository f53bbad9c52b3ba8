"""Grafana provisioning: the datasources the dashboards refer to exist with the right uids and point at
the stack's services, and the dashboards provider reads the repository's dashboards/ directory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy import stack

UIDS = {"prometheus", "jaeger", "clickhouse"}
# Grafana's own pseudo-datasources, valid in any dashboard.
BUILT_IN_UIDS = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"}
# A datasource named inside a link URL: `"datasource":"jaeger"` or `"uid":"jaeger"` (JSON in a URL).
_LINKED_UID = re.compile(r'\\?"(?:datasource|uid)\\?"\s*:\s*\\?"([^"\\]+)')
DASHBOARDS = sorted((stack.REPO / "dashboards").glob("*.json"))


def datasources() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in stack.load_yaml(stack.DATASOURCES_FILE)["datasources"]}


def test_datasources_have_the_uids_the_dashboards_use() -> None:
    provisioned = datasources()
    assert set(provisioned) == UIDS
    assert {uid: d["type"] for uid, d in provisioned.items()} == {
        "prometheus": "prometheus",
        "jaeger": "jaeger",
        "clickhouse": "grafana-clickhouse-datasource",
    }
    # Exemplars (trace ids) open in the provisioned Jaeger.
    (destination,) = provisioned["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": "jaeger"}


def test_datasources_point_at_services_of_the_stack() -> None:
    provisioned, services = datasources(), stack.services()
    for uid in ("prometheus", "jaeger"):
        url = urlsplit(provisioned[uid]["url"])
        assert url.hostname in services, provisioned[uid]["url"]
        assert any(str(p).endswith(f":{url.port}") for p in services[url.hostname]["ports"])
    clickhouse = provisioned["clickhouse"]["jsonData"]
    server = services["clickhouse"]
    assert clickhouse["host"] == "clickhouse" and clickhouse["protocol"] == "http"
    assert any(str(p).endswith(f":{clickhouse['port']}") for p in server["ports"])
    assert clickhouse["username"] == server["environment"]["CLICKHOUSE_USER"]
    assert clickhouse["defaultDatabase"] == server["environment"]["CLICKHOUSE_DB"]
    # The password is not in the file: Grafana expands it from its environment, which compose sets.
    password = provisioned["clickhouse"]["secureJsonData"]["password"]
    assert password.lstrip("$").strip("{}") == "CLICKHOUSE_PASSWORD"
    grafana = services["grafana"]["environment"]
    assert grafana["CLICKHOUSE_PASSWORD"] == server["environment"]["CLICKHOUSE_PASSWORD"]


def test_clickhouse_datasource_names_the_installed_plugin_version() -> None:
    installed = stack.services()["grafana"]["environment"]["GF_INSTALL_PLUGINS"].split()
    assert installed == ["grafana-clickhouse-datasource", datasources()["clickhouse"]["jsonData"]["version"]]


def test_dashboards_provider_reads_the_mounted_dashboards_directory() -> None:
    (provider,) = stack.load_yaml(stack.DASHBOARD_PROVIDERS_FILE)["providers"]
    assert provider["type"] == "file"
    mounts = {target: (source, ro) for source, target, ro in stack.bind_mounts(stack.services()["grafana"])}
    source, read_only = mounts[provider["options"]["path"]]
    assert source == stack.REPO / "dashboards" and read_only
    # The provisioning directory itself is mounted where Grafana looks for it.
    assert mounts["/etc/grafana/provisioning"][0] == stack.DEPLOY / "grafana" / "provisioning"


def datasource_references(node: Any) -> Iterator[tuple[str, str | None]]:
    """(uid, type or None) of every datasource a dashboard names, links included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict) and "uid" in value:
                yield value["uid"], value.get("type")
            elif key == "datasource" and isinstance(value, str):
                yield value, None  # a legacy reference by name, or a ${variable}
            elif key == "datasourceUid" and isinstance(value, str):
                yield value, None
            elif key == "url" and isinstance(value, str):
                yield from ((uid, None) for uid in _LINKED_UID.findall(value))
            else:
                yield from datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item)


@pytest.mark.parametrize(
    "path",
    DASHBOARDS or [pytest.param(None, marks=pytest.mark.skip(reason="dashboards/ has no dashboards yet"))],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_dashboard_refers_only_to_provisioned_datasources(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    provisioned = {uid: d["type"] for uid, d in datasources().items()}
    references = list(datasource_references(dashboard))
    assert references, f"{path.name} names no datasource"
    for uid, kind in references:
        if uid in BUILT_IN_UIDS:
            continue
        assert uid in provisioned, (
            f"{path.name}: datasource {uid!r} is not provisioned (uids: {sorted(provisioned)})"
        )
        assert kind in (None, provisioned[uid]), f"{path.name}: {uid} is a {provisioned[uid]}, not a {kind}"
    # An export made for import: provisioning would leave its ${DS_…} placeholders unresolved.
    assert "__inputs" not in dashboard
