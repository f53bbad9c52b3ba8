"""The gateway under test: its config, its process, and its readiness and audit-queue probes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Child, start

REPO = Path(__file__).resolve().parent.parent
STREAM_PROVIDER = "openai-stream"  # a second openai-kind provider, pointing at the SSE upstream


def gateway_python() -> str:
    """The repo's venv interpreter when there is one, else the one running the bench."""
    venv = REPO / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    probe = subprocess.run(
        [python, "-c", "import gateway.app, uvloop"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise BenchError(
            f"{python} cannot import the gateway: {probe.stderr.strip().splitlines()[-1:]}\n"
            "set it up with `make venv` (or `cd /work/main && .venv/bin/pip install -e '.[test]'`)"
        )
    return python


def gateway_config(
    workdir: Path, port: int, openai_url: str, stream_url: str, telemetry: bool = False
) -> dict[str, Any]:
    """What the benchmark runs: audit into embedded chDB (its store in a child process, the
    default), guards on with their defaults, no access log; telemetry off unless asked
    (bench.telemetry_overhead measures what it adds)."""
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "state_dir": str(workdir / "state"),
            "access_log": False,
            "shutdown_grace_s": 5,
        },
        "providers": {
            "openai": {"kind": "openai", "base_url": openai_url},
            STREAM_PROVIDER: {"kind": "openai", "base_url": stream_url},
        },
        "audit": {"dsn": f"chdb://{workdir / 'audit'}", "spool_dir": str(workdir / "spool")},
        "guards": {"enabled": True},
        "telemetry": {"enabled": telemetry},
    }


@dataclass
class Gateway:
    child: Child
    base_url: str

    @property
    def pid(self) -> int:
        return self.child.pid

    def readiness(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.child.popen.poll() is not None:
                raise BenchError(
                    f"the gateway exited with {self.child.popen.returncode}:\n{self.child.log_tail()}"
                )
            try:
                if self.readiness().get("ready"):
                    return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BenchError(
            f"the gateway was not ready within {timeout_s:g}s ({last}):\n{self.child.log_tail()}"
        )

    def wait_audit_drained(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """Wait until every submitted record is in the store or the spool; returns the writer stats."""
        deadline = time.monotonic() + timeout_s
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = self.readiness().get("audit", {})
            if stats.get("queued", 0) == 0:
                return stats
            time.sleep(0.1)
        raise BenchError(f"the audit queue did not drain within {timeout_s:g}s: {stats}")


def start_gateway(
    python: str, workdir: Path, port: int, openai_url: str, stream_url: str, telemetry: bool = False
) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "gateway.yaml"
    # JSON is YAML: no YAML writer needed here.
    config_path.write_text(
        json.dumps(gateway_config(workdir, port, openai_url, stream_url, telemetry), indent=2)
    )
    child = start(
        "gateway",
        [python, "-m", "gateway", "serve", "--config", str(config_path)],
        workdir / "gateway.log",
        cwd=REPO,
    )
    gateway = Gateway(child, f"http://127.0.0.1:{port}")
    try:
        child.wait_listening(port)
        gateway.wait_ready()
    except BaseException:
        child.stop()
        raise
    return gateway
