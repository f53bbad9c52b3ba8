"""The compose stack, the gateway image and the image pins, checked without Docker: every file parses
and the pieces agree with each other and with the gateway itself.

The collector and Prometheus are in test_collector.py, Grafana in test_grafana.py, Kubernetes in
test_k8s.py; tests/deploy/stack.py reads the files.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest

from gateway.config import GatewayConfig, load_config
from tests.deploy import stack


@pytest.fixture
def clickhouse_password(monkeypatch: pytest.MonkeyPatch) -> str:
    """The variable the gateway configs interpolate, as compose and the k8s Secret set it."""
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "0123abcd")
    return "0123abcd"


def compose_gateway_config() -> GatewayConfig:
    gateway = stack.services()["gateway"]
    (source,) = [src for src, dst, _ in stack.bind_mounts(gateway) if dst == "/etc/llm-gateway/gateway.yaml"]
    return load_config(source)


def project_version() -> str:
    version: str = tomllib.loads((stack.REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


# -- images ---------------------------------------------------------------------------------------


def all_images() -> list[tuple[str, str]]:
    """(where, image) of every image the stack runs or builds on."""
    images = [(f"compose {name}", s["image"]) for name, s in stack.services().items() if "image" in s]
    images += [
        ("Dockerfile FROM", args.split()[0])
        for name, args in stack.dockerfile_instructions()
        if name == "FROM"
    ]
    images.append(("k8s Deployment", stack.k8s_container()["image"]))
    for entry in stack.load_yaml(stack.K8S / "kustomization.yaml").get("images", ()):
        images.append(("kustomization images", f"{entry.get('newName', entry['name'])}:{entry['newTag']}"))
    return images


def test_every_image_is_pinned_to_an_exact_version() -> None:
    unpinned = [(where, image) for where, image in all_images() if not stack.PINNED_IMAGE.match(image)]
    assert not unpinned, f"images without an exact version tag: {unpinned}"
    assert all("latest" not in image for _, image in all_images())


def test_the_gateway_image_is_tagged_with_the_project_version() -> None:
    version = project_version()
    gateway_images = [image for where, image in all_images() if "llm-gateway" in image]
    assert gateway_images and all(image.endswith(f":{version}") for image in gateway_images), gateway_images


def test_the_grafana_plugin_is_pinned() -> None:
    plugins = stack.services()["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", plugins), plugins


# -- compose --------------------------------------------------------------------------------------


def test_compose_runs_the_whole_stack() -> None:
    assert set(stack.services()) == {
        "gateway",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
        "clickhouse",
    }
    gateway = stack.services()["gateway"]
    assert gateway["build"]["context"] == ".."
    assert (
        stack.DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]
    ).resolve() == stack.DOCKERFILE


def test_compose_mounts_exist_and_config_mounts_are_read_only() -> None:
    declared = set(stack.compose().get("volumes") or {})
    for name, service in stack.services().items():
        for source, target, read_only in stack.bind_mounts(service):
            assert source.exists(), f"{name}: mounts {source}, which does not exist"
            assert source.is_relative_to(stack.REPO), f"{name}: mounts {source} from outside the repository"
            assert read_only, f"{name}: {target} is mounted read-write from the repository"
        for volume in stack.named_mounts(service):
            assert volume in declared, f"{name}: volume {volume} is not declared under volumes:"


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, service in stack.services().items():
        for port in service.get("ports", ()):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"


def test_compose_waits_only_on_health_checks_that_exist() -> None:
    services = stack.services()
    image_has_healthcheck = any(name == "HEALTHCHECK" for name, _ in stack.dockerfile_runtime_stage())
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if spec.get("condition") == "service_healthy":
                other = services[dependency]
                assert "healthcheck" in other or ("build" in other and image_has_healthcheck), (
                    f"{name} waits for {dependency} to be healthy, but it has no health check"
                )


def test_compose_gateway_config_loads_and_matches_the_stack(clickhouse_password: str) -> None:
    config = compose_gateway_config()
    services = stack.services()
    gateway, clickhouse = services["gateway"], services["clickhouse"]
    assert config.server.host == "0.0.0.0"  # inside the container; published on loopback by compose
    assert gateway["ports"] == [f"127.0.0.1:{config.server.port}:{config.server.port}"]
    # The audit goes to the clickhouse service, as its user, into its database.
    dsn = urlsplit(config.audit.dsn)
    assert dsn.scheme in ("http", "https") and not config.audit.embedded
    assert dsn.hostname == "clickhouse" and dsn.port == 8123
    assert any(str(p).endswith(f":{dsn.port}") for p in clickhouse["ports"])
    assert dsn.username == clickhouse["environment"]["CLICKHOUSE_USER"]
    assert dsn.password == clickhouse_password
    assert config.audit.target_database == clickhouse["environment"]["CLICKHOUSE_DB"]
    # Every variable the config interpolates is in the gateway's environment.
    needed = stack.required_env(stack.DEPLOY / "gateway.yaml")
    assert needed <= set(gateway["environment"]), needed - set(gateway["environment"])
    # State and spool live on the gateway's volume, so they survive a container restart.
    (volume_path,) = stack.named_mounts(gateway).values()
    for path in (config.server.state_dir, config.audit.spool_dir):
        assert PurePosixPath(path).is_relative_to(volume_path), path


def test_compose_gateway_pushes_telemetry_to_the_collector() -> None:
    environment = stack.services()["gateway"]["environment"]
    endpoint = environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"
    http_receiver = stack.collector()["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert stack.port_of(endpoint) == stack.port_of(http_receiver)
    assert environment["OTEL_SERVICE_NAME"] == "llm-gateway"
    assert environment.get("OTEL_METRICS_EXPORTER", "otlp") != "none"  # metrics are pushed here ...
    prometheus = stack.load_yaml(stack.PROMETHEUS_FILE)
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for sc in job.get("static_configs", ())
        for t in sc["targets"]
    ]
    assert not [t for t in targets if t.startswith("gateway:")]  # ... so not scraped too (no doubles)


def test_compose_stop_grace_covers_the_gateway_shutdown(clickhouse_password: str) -> None:
    config = compose_gateway_config()
    grace = int(stack.services()["gateway"]["stop_grace_period"].removesuffix("s"))
    assert grace > config.server.shutdown_grace_s + stack.OTLP_EXPORT_TIMEOUT_S


# -- the gateway image ----------------------------------------------------------------------------


def test_dockerfile_runs_the_gateway_as_a_non_root_user_on_the_config_port(clickhouse_password: str) -> None:
    runtime = dict(stack.dockerfile_runtime_stage())
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", runtime["FROM"]), runtime["FROM"]
    user = runtime["USER"].split(":")[0]
    assert user not in ("root", "0")
    pod_security = stack.k8s_objects()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert int(user) == pod_security["runAsUser"]  # runAsNonRoot needs the numeric uid
    config = compose_gateway_config()
    assert int(runtime["EXPOSE"]) == config.server.port
    assert f"127.0.0.1:{config.server.port}/healthz" in runtime["HEALTHCHECK"]
    entrypoint = json.loads(runtime["ENTRYPOINT"])
    assert entrypoint == [
        "llm-gateway",
        "serve",
        "--config",
        "/etc/llm-gateway/gateway.yaml",
        "--host",
        "0.0.0.0",
    ]
    # The config the entrypoint reads is the one compose mounts.
    targets = {dst for _, dst, _ in stack.bind_mounts(stack.services()["gateway"])}
    assert entrypoint[3] in targets


def test_dockerfile_copies_what_the_package_build_needs() -> None:
    pyproject = tomllib.loads((stack.REPO / "pyproject.toml").read_text())
    copied = set()
    for name, args in stack.dockerfile_instructions():
        if name == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (stack.REPO / source).exists(), f"COPY {source}: not in the repository"
                copied.add(source)
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (stack.DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", ".git", "bench/results"} <= ignored
    assert "deploy/.env" in ignored  # compose's secrets file
