"""Time to first byte of streamed responses, measured with curl over one keep-alive connection."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

_FORMAT = (
    "%{http_code} %{time_starttransfer} %{time_total} %{size_download} [%header{x-gateway-request-id}]\\n"
)


@dataclass(frozen=True, slots=True)
class Transfer:
    status: int
    ttfb_ms: float
    total_ms: float
    size: int
    request_id: str


def locate_curl() -> str:
    found = shutil.which("curl")
    if not found:
        raise BenchError("curl not found: install it (Debian: `apt-get install -y curl`)")
    return found


def curl_transfers(
    binary: str, url: str, body_file: Path, count: int, headers: Mapping[str, str] | None = None
) -> list[Transfer]:
    """`count` sequential POSTs of `body_file` to `url` in one curl process (connection reused)."""
    argv: list[str] = [
        binary,
        "--silent",
        "--show-error",
        "--data-binary",
        f"@{body_file}",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Authorization: Bearer sk-bench-not-a-real-key",
        "--write-out",
        _FORMAT,
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    for _ in range(count):
        argv += [url, "--output", "/dev/null"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BenchError(f"curl failed ({done.returncode}) on {url}: {done.stderr.strip()}")
    return [_parse(line) for line in done.stdout.splitlines() if line.strip()]


def _parse(line: str) -> Transfer:
    fields = line.split(" ", 4)
    return Transfer(
        int(fields[0]),
        float(fields[1]) * 1000,
        float(fields[2]) * 1000,
        int(fields[3]),
        fields[4].strip("[]"),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
