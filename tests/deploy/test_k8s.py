"""deploy/k8s: the manifests agree on names, labels and ports, the config they mount loads with the
gateway's own loader, and the probes hit routes the gateway serves."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.config import GatewayConfig, load_config
from tests.deploy import stack

_ENV_USE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    """The gateway config of the k8s ConfigMap, with the Secret's variable set."""
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "0123abcd")
    return load_config(stack.k8s_config_file())


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = stack.k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    return spec


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = stack.k8s_objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def mounts_by_volume_kind(kind: str) -> list[str]:
    """Mount paths of the container's volumes of one kind (emptyDir, configMap, …)."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return [m["mountPath"] for m in stack.k8s_container()["volumeMounts"] if kind in volumes[m["name"]]]


def test_kustomization_lists_every_manifest_and_its_config() -> None:
    kustomization = stack.load_yaml(stack.K8S / "kustomization.yaml")
    manifests = {p.name for p in stack.K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert stack.k8s_config_file().is_file()
    assert set(stack.k8s_objects()) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }


def test_kustomize_renders_the_config_map_the_deployment_mounts() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(stack.K8S)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout) if doc}
    config_map = rendered["ConfigMap"]
    # The name carries a hash of the content, so a config change rolls the pods.
    assert re.fullmatch(r"llm-gateway-config-[a-z0-9]+", config_map["metadata"]["name"])
    assert config_map["data"]["gateway.yaml"] == stack.k8s_config_file().read_text()
    spec = rendered["Deployment"]["spec"]["template"]["spec"]
    assert [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v] == [
        config_map["metadata"]["name"]
    ]
    (container,) = spec["containers"]
    assert stack.PINNED_IMAGE.match(container["image"]), container["image"]


def test_config_loads_and_uses_a_clickhouse_server(config: GatewayConfig) -> None:
    # Replicas share the audit store: a server DSN, never the single-process embedded chDB.
    assert urlsplit(config.audit.dsn).scheme in ("http", "https") and not config.audit.embedded
    assert urlsplit(config.audit.dsn).password == "0123abcd"
    assert config.server.host == "0.0.0.0"
    (port,) = stack.k8s_container()["ports"]
    assert config.server.port == port["containerPort"]
    assert config.telemetry.prometheus  # the ServiceMonitor scrapes /metrics


def test_config_is_mounted_where_the_image_reads_it_and_writes_go_to_empty_dirs(
    config: GatewayConfig,
) -> None:
    (config_mount,) = mounts_by_volume_kind("configMap")
    entrypoint = dict(stack.dockerfile_runtime_stage())["ENTRYPOINT"]
    assert f'"{config_mount}/{stack.k8s_config_file().name}"' in entrypoint
    writable = [PurePosixPath(p) for p in mounts_by_volume_kind("emptyDir")]
    for path in (config.server.state_dir, config.audit.spool_dir, "/tmp"):
        assert any(PurePosixPath(path).is_relative_to(w) for w in writable), (
            f"{path} is on the read-only root"
        )


def test_env_provides_what_the_config_needs_in_an_order_kubernetes_expands() -> None:
    env = stack.k8s_container()["env"]
    defined: list[str] = []
    for variable in env:
        for used in _ENV_USE.findall(variable.get("value", "")):
            assert used in defined, f"{variable['name']} uses $({used}) before it is defined"
        defined.append(variable["name"])
    needed = stack.required_env(stack.k8s_config_file())
    assert needed <= set(defined), needed - set(defined)
    by_name = {v["name"]: v for v in env}
    secret = stack.load_yaml(stack.K8S / "secret.example.yaml")
    reference = by_name["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
    # Traces are pushed to the collector; metrics are scraped (ServiceMonitor), not pushed too.
    assert urlsplit(by_name["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]).port == 4318
    assert by_name["OTEL_METRICS_EXPORTER"]["value"] == "none"


def test_probes_use_the_health_routes_on_the_named_port() -> None:
    container = stack.k8s_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_gateway_serves_the_probe_and_scrape_paths(config: GatewayConfig, tmp_path: Path) -> None:
    # The k8s config, with ClickHouse at a closed loopback port and local directories: the probes
    # must answer whatever the audit store does (/readyz says whether it is open).
    local = load_config(
        stack.k8s_config_file(),
        {
            "audit.dsn": f"http://gateway:x@127.0.0.1:{free_port()}/llm_gateway",
            "audit.spool_dir": str(tmp_path / "spool"),
            "audit.isolation": "thread",
            "server.state_dir": str(tmp_path / "state"),
        },
    )
    app = build_app(local)
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    container = stack.k8s_container()
    probe_paths = {
        container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    monitor_paths = {e["path"] for e in stack.k8s_objects()["ServiceMonitor"]["spec"]["endpoints"]}
    assert probe_paths | monitor_paths <= routes
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["ready"] is False  # the store is down
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and "llm_gateway_" in await metrics.text()


def test_shutdown_fits_in_the_termination_grace_period(config: GatewayConfig) -> None:
    spec = pod_spec()
    (_, seconds) = stack.k8s_container()["lifecycle"]["preStop"]["exec"]["command"]
    needed = int(seconds) + config.server.shutdown_grace_s + stack.OTLP_EXPORT_TIMEOUT_S
    assert spec["terminationGracePeriodSeconds"] > needed


def test_pods_run_unprivileged_with_resources() -> None:
    pod, container = pod_spec()["securityContext"], stack.k8s_container()
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_service_monitor_hpa_and_pdb_select_the_deployment() -> None:
    objects = stack.k8s_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    labels = pod_labels()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Service -> pods, by the named container port.
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["targetPort"] in {
        p["name"] for p in stack.k8s_container()["ports"]
    }
    # ServiceMonitor -> Service, by its labels and the port's name.
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    # HPA -> the Deployment, on CPU (which needs CPU requests).
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    # PDB -> the pods, and it lets a node drain.
    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    )
