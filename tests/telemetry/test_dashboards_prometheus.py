"""Every PromQL query in dashboards/*.json returns data from a real Prometheus server that scrapes a
running gateway's /metrics while the official SDKs send it traffic (successes, streams, upstream
errors, a timeout, a malformed request and scanner findings)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.telemetry.setup import Telemetry, build_telemetry
from tests.telemetry.dashboards_support import (
    GatewayThread,
    PanelQuery,
    VariableQuery,
    drive_traffic,
    expand_promql,
    has_data,
    label_values_query,
    panel_queries,
    variable_queries,
)

PANELS = panel_queries("prometheus")
VARIABLES = variable_queries("prometheus")
SCRAPES_BETWEEN_ROUNDS = 3


def metrics_only(config: GatewayConfig) -> Telemetry:
    """The gateway's own telemetry, deaf to OTEL_* variables of the machine running the tests."""
    return build_telemetry(config, env={})


# -- a real Prometheus -----------------------------------------------------------------------------


def prometheus_binary() -> str:
    """The Debian prometheus binary; fail when root could have installed it, skip otherwise."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else ""
    )
    if not found:
        if os.geteuid() == 0:
            pytest.fail("prometheus is not installed: run `make system-deps` (apt-get install -y prometheus)")
        pytest.skip(
            "prometheus is not installed (`apt-get install prometheus` as root, or `make system-deps`)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus server on a free port scraping one target every second, queried over its HTTP API."""

    JOB = "llm-gateway"

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: {self.JOB}\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self._log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; Prometheus answers JSON with a status even for bad queries (HTTP 400/422)."""
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def label_values(self, metric: str, label: str) -> list[str]:
        values: list[str] = self.get(f"/api/v1/label/{label}/values", **{"match[]": metric})["data"]
        return values

    def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log_tail()}"
            time.sleep(0.2)

    def scrapes(self) -> int:
        """Successful scrapes of the gateway in the last five minutes."""
        result = self.query(f'sum_over_time(up{{job="{self.JOB}"}}[5m])')["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def wait_for_scrapes(self, count: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while self.scrapes() < count:
            assert time.monotonic() < deadline, f"prometheus is not scraping the gateway:\n{self.log_tail()}"
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping a gateway (team and key labels on) that has served two rounds of traffic.

    Each round comes after a few scrapes, so every counter and histogram bucket has risen between
    two samples inside a rate() window when the tests query.
    """
    prometheus_binary()  # skip or fail before starting anything
    workdir: Path = tmp_path_factory.mktemp("dashboards-prometheus")
    gateway = GatewayThread(workdir, metrics_only, telemetry={"identity_labels": True})
    server = None
    try:
        server = Prometheus(workdir, f"127.0.0.1:{gateway.gateway.server.port}")
        server.wait_ready()
        for round_ in (1, 2):
            server.wait_for_scrapes(SCRAPES_BETWEEN_ROUNDS * round_)
            gateway.run(drive_traffic(gateway.gateway))
        gateway.run(gateway.gateway.writer.flush())
        server.wait_for_scrapes(SCRAPES_BETWEEN_ROUNDS * 3)
        yield server
    finally:
        if server is not None:
            server.stop()
        gateway.close()


@pytest.mark.parametrize("query", PANELS, ids=[q.name for q in PANELS])
def test_panel_query_returns_data(prometheus: Prometheus, query: PanelQuery) -> None:
    expr = expand_promql(query.text, query.variables)
    answer = prometheus.query(expr)
    assert answer.get("status") == "success", f"{answer.get('errorType')}: {answer.get('error')}\n{expr}"
    result = answer["data"]["result"]
    assert has_data(expr, result), f"no data (result {result}) for\n{expr}"


@pytest.mark.parametrize("variable", VARIABLES, ids=[v.name for v in VARIABLES])
def test_template_variable_has_values(prometheus: Prometheus, variable: VariableQuery) -> None:
    metric, label = label_values_query(variable.text)
    values = prometheus.label_values(expand_promql(metric, _dashboard_variables(variable)), label)
    assert values, f"label_values({metric}, {label}) is empty"


def test_every_dashboard_has_prometheus_queries() -> None:
    dashboards = {q.dashboard for q in PANELS}
    assert dashboards == {"gateway-overview.json", "usage-cost.json", "security.json"}


def _dashboard_variables(variable: VariableQuery) -> tuple[dict[str, object], ...]:
    """The other variables of the dashboard a variable belongs to (chained variables refer to them)."""
    for query in PANELS:
        if query.dashboard == variable.dashboard:
            return query.variables
    return ()
