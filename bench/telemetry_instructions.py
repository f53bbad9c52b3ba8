"""`python -m bench.telemetry_instructions`: instructions per request added by telemetry, under callgrind.

CPU time on a shared 2-core machine moves by ±100 µs a request between runs; instruction counts
do not. Each variant's gateway runs under valgrind's callgrind with instrumentation switched on
only around a fixed number of requests (closed loop, a few connections), so the count covers the
request path and whatever the export threads did meanwhile, in the gateway process only
(user-space instructions: no kernel time, no audit child). It ranks and attributes costs; the
CPU figures of record come from `bench.telemetry_overhead`. The periodic metric push is slowed
to once per 10 minutes here: under callgrind's ~20x slowdown it would otherwise run 20x as often
per request as in real time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.gateway_proc import REPO, gateway_python
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import CHAT_PATH, chat_request
from bench.procs import BenchError, Child, free_port, start
from bench.telemetry_overhead import VARIANTS, start_variant


def say(message: str) -> None:
    print(f"[telemetry-instructions] {message}", file=sys.stderr, flush=True)


def drive(port: int, requests: int, connections: int) -> list[int]:
    """`requests` chat completions over `connections` kept-alive connections; their statuses."""
    body = chat_request()
    statuses: list[int] = []

    def one_connection(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for _ in range(n):
            conn.request("POST", "/openai" + CHAT_PATH, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()

    threads = [
        threading.Thread(target=one_connection, args=(requests // connections,)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def instructions(out: Path) -> int:
    """The `totals:` of every dump callgrind wrote for `out` (one per dump)."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def measure(
    python: str, work: Path, upstream: str, sink: str, variant: str, requests: int, connections: int
) -> dict[str, Any]:
    out = work / "callgrind.out"
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    gateway = start_variant(
        python, work, upstream, sink, variant, wrapper, {"OTEL_METRIC_EXPORT_INTERVAL": "600000"}, 300.0
    )
    try:
        drive(int(gateway.base_url.rsplit(":", 1)[1]), 8 * connections, connections)  # warm-up
        gateway.wait_audit_drained(60)
        callgrind(gateway.pid, "-i", "on")
        started = time.monotonic()
        statuses = drive(int(gateway.base_url.rsplit(":", 1)[1]), requests, connections)
        gateway.wait_audit_drained(120)
        callgrind(gateway.pid, "-i", "off")
        callgrind(gateway.pid, "--dump")
        elapsed = time.monotonic() - started
    finally:
        gateway.child.stop(60)
    if statuses.count(200) != len(statuses):
        raise BenchError(f"{variant}: non-200 answers {sorted(set(statuses))}")
    return {
        "requests": len(statuses),
        "instructions_per_request": round(instructions(out) / len(statuses)),
        "seconds": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.telemetry_instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=400, help="measured requests per run (default 400)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant (counts vary by ~1%%)")
    parser.add_argument("--variants", default="off,metrics,full", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "telemetry_instructions.json"
    )
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise BenchError("needs valgrind (Debian: `apt-get install -y valgrind`)")
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS) or "off" not in variants:
        parser.error(f"--variants: 'off' plus any of {', '.join(VARIANTS)}")
    python, nginx = gateway_python(), locate_nginx(install=True)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="llm-gateway-telemetry-instructions-") as tmp:
        work = Path(tmp)
        nginx_port, sink_port = free_port(), free_port()
        children: list[Child] = []
        try:
            children.append(start_nginx(nginx, work / "nginx", nginx_port))
            sink = start(
                "otlp sink",
                [python, "-m", "bench.otlp_sink", "--port", str(sink_port)],
                work / "sink.log",
                REPO,
            )
            children.append(sink)
            sink.wait_listening(sink_port)
            upstream, sink_url = f"http://127.0.0.1:{nginx_port}", f"http://127.0.0.1:{sink_port}"
            for r in range(args.rounds):
                for variant in variants:
                    row = measure(
                        python,
                        work / f"gw-{variant}-{r}",
                        upstream,
                        sink_url,
                        variant,
                        args.requests,
                        args.connections,
                    )
                    results[variant].append(row)
                    say(f"{variant}: {row}")
        finally:
            for child in reversed(children):
                child.stop()
    medians = {
        v: statistics.median(r["instructions_per_request"] for r in rows) for v, rows in results.items()
    }
    summary = {
        "requests_per_run": args.requests,
        "connections": args.connections,
        "variants": {v: VARIANTS[v] for v in variants},
        "rounds": results,
        "median_instructions_per_request": medians,
        "added_instructions_per_request": {v: m - medians["off"] for v, m in medians.items() if v != "off"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("| telemetry | instructions/request (gateway process, user space) | added |\n|---|---:|---:|")
    for v, m in medians.items():
        print(f"| {v} | {m / 1e6:.2f} M | {(m - medians['off']) / 1e6:+.2f} M |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
