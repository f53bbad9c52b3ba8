"""Drive wrk (the compiled load generator) with bench/lua/chat.lua and parse its JSON summary."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError

LUA_SCRIPT = Path(__file__).parent / "lua" / "chat.lua"
_MARKER = "BENCH_JSON "


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What wrk measured in one run; latencies in milliseconds."""

    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def locate_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        raise BenchError(
            "wrk not found: install it (Debian: `apt-get install -y wrk`, or `make system-deps`)"
        )
    return found


def run_wrk(
    binary: str,
    url: str,
    body_file: Path,
    connections: int,
    duration_s: float,
    threads: int = 1,
    rate_rps: float = 0.0,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> WrkResult:
    """One wrk run: closed loop when `rate_rps` is 0, else paced to `rate_rps` in total."""
    threads = max(1, min(threads, connections))
    argv = [
        binary,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(LUA_SCRIPT),
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += [url, "--", str(body_file)]
    if rate_rps > 0:
        argv.append(f"{rate_rps / threads:.3f}")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[len(_MARKER) :])
    lat = data["latency_us"]
    return WrkResult(
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        bytes=data["bytes"],
        errors=data["errors"],
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000,
        mean_ms=lat["mean"] / 1000,
        max_ms=lat["max"] / 1000,
    )
