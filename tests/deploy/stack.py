"""The deployable stack as data: paths, parsed files and small readers shared by the deploy tests."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COLLECTOR_FILE = REPO / "otel" / "collector.yaml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
OTLP_EXPORT_TIMEOUT_S = 10  # the OTel SDK's default OTEL_EXPORTER_OTLP_TIMEOUT: the last export at shutdown

# An exact release: x.y.z (ClickHouse adds a fourth number), optionally a variant suffix
# (`-slim-bookworm`). Not `latest`, not `3.11`, not `11`.
PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*:v?\d+\.\d+\.\d+(\.\d+)?(-[A-Za-z0-9.]+)*$")
# `${env:NAME:-default}` in the collector config.
_COLLECTOR_ENV = re.compile(r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*:-(.*)\}$")
# `${NAME}` / `${NAME:-default}` in a gateway config (the loader's syntax).
GATEWAY_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def required_env(path: Path) -> set[str]:
    """Variables a gateway config interpolates without a default (in values, not comments)."""

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for item in node for s in strings(item)]
        return [node] if isinstance(node, str) else []

    return {
        m.group(1) for s in strings(load_yaml(path)) for m in GATEWAY_ENV_REF.finditer(s) if not m.group(2)
    }


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


@cache
def collector() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COLLECTOR_FILE)
    return data


def collector_value(value: Any) -> Any:
    """A collector config value with `${env:NAME:-default}` replaced by its default, YAML-typed."""
    if isinstance(value, str) and (match := _COLLECTOR_ENV.match(value)):
        return yaml.safe_load(match.group(1))
    return value


def port_of(endpoint: str) -> int:
    """The port of `host:port`, `scheme://host:port` or `scheme://host:port/path`."""
    return int(endpoint.rsplit("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])


def host_of(endpoint: str) -> str:
    return endpoint.rsplit("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path resolved against deploy/, container path, read-only) of a service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", ()):
        parts = str(volume).split(":")
        if parts[0].startswith((".", "/")):
            mounts.append(((DEPLOY / parts[0]).resolve(), parts[1], parts[2:] == ["ro"]))
    return mounts


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{volume name: container path} of a service's named volumes."""
    return {
        parts[0]: parts[1]
        for parts in (str(v).split(":") for v in service.get("volumes", ()))
        if not parts[0].startswith((".", "/"))
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def dockerfile_runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (what the image runs)."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


@cache
def k8s_objects() -> dict[str, dict[str, Any]]:
    """{kind: object} of the manifests kustomization.yaml lists (one object per kind here)."""
    objects: dict[str, dict[str, Any]] = {}
    for name in load_yaml(K8S / "kustomization.yaml")["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects; the tests expect one"
                objects[doc["kind"]] = doc
    return objects


def k8s_container() -> dict[str, Any]:
    (container,) = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def k8s_config_file() -> Path:
    """The gateway config file the ConfigMap generator packs."""
    (generator,) = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    (source,) = generator["files"]
    return K8S / source.split("=", 1)[-1]
