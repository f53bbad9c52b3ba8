"""otel/collector.yaml and deploy/prometheus/prometheus.yml: pipelines that the collector can build,
tail sampling that keeps what the gateway marks as interesting, and scrape targets that exist."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from gateway.audit.record import Outcome
from gateway.config import load_config
from gateway.telemetry import genai
from tests.deploy import stack

SECTIONS = ("receivers", "processors", "exporters")


def policies() -> dict[str, dict[str, Any]]:
    """{policy type: policy} of the tail sampler (one policy per type here)."""
    found: dict[str, dict[str, Any]] = {}
    for policy in stack.collector()["processors"]["tail_sampling"]["policies"]:
        assert policy["type"] not in found, f"two {policy['type']} policies"
        found[policy["type"]] = policy[policy["type"]]
    return found


def test_pipelines_use_only_defined_components_and_use_them_all() -> None:
    config = stack.collector()
    service = config["service"]
    assert set(service["extensions"]) == set(config["extensions"])
    used: dict[str, set[str]] = {section: set() for section in SECTIONS}
    for name, pipeline in service["pipelines"].items():
        for section in SECTIONS:
            assert pipeline[section], f"pipeline {name} has no {section}"
            for component in pipeline[section]:
                assert component in config[section], f"{name}: {component} is not defined under {section}"
                used[section].add(component)
    for section in SECTIONS:
        assert used[section] == set(config[section]), f"{section} defined but unused"


def test_memory_limiter_comes_first_and_sampling_before_batching() -> None:
    pipelines = stack.collector()["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
    traces = pipelines["traces"]["processors"]
    assert traces.index("tail_sampling") < traces.index("batch")
    assert not [
        name for name, p in pipelines.items() if name != "traces" and "tail_sampling" in p["processors"]
    ]


def test_tail_sampling_keeps_errors_slow_traces_and_a_share_of_the_rest() -> None:
    found = policies()
    assert found["status_code"]["status_codes"] == ["ERROR"]
    assert stack.collector_value(found["latency"]["threshold_ms"]) == 5000
    assert stack.collector_value(found["probabilistic"]["sampling_percentage"]) == 10
    names = [p["name"] for p in stack.collector()["processors"]["tail_sampling"]["policies"]]
    assert len(names) == len(set(names))


def test_tail_sampling_matches_what_the_gateway_puts_on_its_spans() -> None:
    found = policies()
    outcomes = found["string_attribute"]
    assert outcomes["key"] == genai.OUTCOME
    assert set(outcomes["values"]) <= {str(o) for o in Outcome}
    assert Outcome.OK not in outcomes["values"]
    (condition,) = found["ottl_condition"]["spanevent"]
    assert condition == f'name == "{genai.FINDING_EVENT}"'


def test_collector_listens_where_the_stack_sends_and_exports_to_jaeger_over_otlp() -> None:
    config = stack.collector()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    services = stack.services()
    published = {int(str(p).rsplit(":", 1)[1]) for p in services["otel-collector"]["ports"]}
    assert {4317, 4318, stack.port_of(config["extensions"]["health_check"]["endpoint"])} <= published
    assert not [name for name in config["exporters"] if name.split("/")[0] == "jaeger"]  # removed upstream
    jaeger = config["exporters"]["otlp/jaeger"]
    assert stack.host_of(jaeger["endpoint"]) == "jaeger" and stack.port_of(jaeger["endpoint"]) == 4317
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def listening_ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """{compose service: ports it listens on}, read from each service's own config."""
    collector = stack.collector()
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "0123abcd")
    gateway_config = load_config(stack.DEPLOY / "gateway.yaml")
    (reader,) = collector["service"]["telemetry"]["metrics"]["readers"]
    return {
        "otel-collector": {
            4317,
            4318,
            stack.port_of(collector["exporters"]["prometheus"]["endpoint"]),
            stack.port_of(collector["extensions"]["health_check"]["endpoint"]),
            reader["pull"]["exporter"]["prometheus"]["port"],
        },
        "gateway": {gateway_config.server.port},
        "prometheus": {9090},
        "jaeger": {4317, 4318, 14269, 16686},
        "clickhouse": {8123},
        "grafana": {3000},
    }


def test_prometheus_scrapes_the_collector_and_only_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = listening_ports(monkeypatch)
    jobs = {job["job_name"]: job for job in stack.load_yaml(stack.PROMETHEUS_FILE)["scrape_configs"]}
    targets = {t: name for name, job in jobs.items() for sc in job["static_configs"] for t in sc["targets"]}
    for target, job in targets.items():
        host, port = target.rsplit(":", 1)
        host = "prometheus" if host == "localhost" else host
        assert int(port) in ports.get(host, set()), f"job {job}: nothing listens on {target} in the stack"
    exporter = f"otel-collector:{stack.port_of(stack.collector()['exporters']['prometheus']['endpoint'])}"
    assert exporter in targets
    # Keep job/instance from service.name/service.instance.id: one series per gateway process.
    assert jobs[targets[exporter]]["honor_labels"] is True


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; `make system-deps` installs it)")
    # --syntax-only: the config names hosts of the compose network, which do not resolve here.
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(stack.PROMETHEUS_FILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
