"""The deployable stack, checked without Docker: every file parses and the pieces agree with each other
(ports, mounts, image pins, datasource uids, probes, labels) and with the gateway itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(\.\d+)?(-[\w.]+)?$")  # exact version, no latest


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load(DEPLOY / "docker-compose.yml")
    return data


def k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and path.name != "secret.example.yaml":
                return doc  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} in deploy/k8s")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "test-password")


# -- compose --------------------------------------------------------------------------------------


def test_compose_has_the_whole_stack_with_pinned_images() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "otel-collector", "jaeger", "prometheus", "grafana", "clickhouse"}
    for name, service in services.items():
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            continue
        assert PINNED.match(service["image"]), f"{name}: image {service['image']} is not pinned"
    plugin = services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", plugin)


def test_compose_mounts_exist_and_ports_are_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", ()):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        for port in service.get("ports", ()):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"


def test_gateway_container_config_port_dockerfile_and_probes_agree(env: None) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", dockerfile, re.M)
    gateway = compose()["services"]["gateway"]
    (mount,) = [v for v in gateway["volumes"] if v.endswith("/etc/llm-gateway/gateway.yaml:ro")]
    config = load_config(DEPLOY / mount.split(":", 1)[0])
    assert config.server.port == int(exposed)
    assert gateway["ports"] == [f"127.0.0.1:{exposed}:{exposed}"]
    assert config.audit.dsn.startswith("http://") and "test-password" in config.audit.dsn
    assert "/etc/llm-gateway/gateway.yaml" in dockerfile and "/healthz" in dockerfile
    assert gateway["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    grace = int(gateway["stop_grace_period"].rstrip("s"))
    assert grace > config.server.shutdown_grace_s


# -- collector ------------------------------------------------------------------------------------


def test_collector_pipelines_reference_defined_components() -> None:
    collector = load(REPO / "otel" / "collector.yaml")
    service = collector["service"]
    assert set(service["extensions"]) <= set(collector["extensions"])
    for name, pipeline in service["pipelines"].items():
        for part in ("receivers", "processors", "exporters"):
            for component in pipeline[part]:
                assert component in collector[part], f"{name}: {component} is not defined under {part}"
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
    policies = {p["type"]: p for p in collector["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] > 0
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert "tail_sampling" in service["pipelines"]["traces"]["processors"]
    # The collector's exporters reach services that exist in the compose stack.
    services = compose()["services"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] in services
    ports = {str(p).rsplit(":", 1)[-1] for p in services["otel-collector"]["ports"]}
    assert {"4317", "4318"} <= ports


def test_prometheus_scrapes_services_of_the_stack() -> None:
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    services = compose()["services"]
    collector = load(REPO / "otel" / "collector.yaml")
    exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"otel-collector:{exporter_port}" in targets
    for target in targets:
        host = target.split(":")[0]
        assert host in services or host == "localhost", target


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make system-deps`)")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana --------------------------------------------------------------------------------------


def test_grafana_provisions_the_datasources_and_dashboards_the_dashboards_use() -> None:
    datasources = load(DEPLOY / "grafana/provisioning/datasources/datasources.yaml")["datasources"]
    uids = {d["uid"] for d in datasources}
    assert uids == {"prometheus", "jaeger", "clickhouse"}
    provider = load(DEPLOY / "grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (DEPLOY / mounts[provider["options"]["path"]]).resolve() == REPO / "dashboards"
    for path in (REPO / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", ()):
                assert target["datasource"]["uid"] in uids, (path.name, panel["title"])
    # Trace ids in the audit explorer link to the provisioned Jaeger datasource.
    assert '\\"datasource\\":\\"jaeger\\"' in (REPO / "dashboards" / "audit-explorer.json").read_text()


# -- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


async def test_k8s_probes_hit_routes_the_gateway_serves(env: None) -> None:
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert paths == {"/healthz", "/readyz"}
    config = load_config(None)
    client = TestClient(TestServer(build_app(config)))
    async with client:
        resp = await client.get("/healthz")
        assert resp.status == 200
    routes = {r.resource.canonical for r in build_app(config).router.routes() if r.resource is not None}
    assert {"/healthz", "/readyz", "/metrics"} <= routes


def test_k8s_objects_agree_on_names_labels_and_ports(env: None) -> None:
    deployment, service = k8s("Deployment"), k8s("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (port,) = container["ports"]
    assert service["spec"]["ports"][0]["name"] == port["name"] == "http"
    monitor = k8s("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    hpa, pdb = k8s("HorizontalPodAutoscaler"), k8s("PodDisruptionBudget")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    # The config the ConfigMap carries loads with the gateway's own loader and listens on the port.
    configmap = k8s("ConfigMap")
    path = K8S / "_configmap_gateway.yaml"
    try:
        path.write_text(configmap["data"]["gateway.yaml"])
        config = load_config(path)
    finally:
        path.unlink(missing_ok=True)
    assert config.server.port == port["containerPort"]
    assert config.audit.dsn.startswith("http")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.server.shutdown_grace_s
    env_names = {e["name"]: e for e in container["env"]}
    assert env_names["OTEL_METRICS_EXPORTER"]["value"] == "none"  # scraped, not pushed: no doubles
    assert PINNED.match(container["image"])
