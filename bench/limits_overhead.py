"""`python -m bench.limits_overhead`: what rate-limit and budget checks add per request.

Three gateways in turn in front of the same upstream (nginx), at one fixed offered rate (wrk,
paced): no limit rules ("off"); one per-key rule with rpm, tpm, concurrency and daily and
monthly budgets, counted in memory ("memory"); the same rule counted in a real redis-server on
loopback ("redis": one Lua script to reserve, one to settle, per request). Limits are set far
above the offered load so every request is checked and none refused. Rounds alternate order;
the figures are medians: gateway CPU per request and added latency p50/p99 against "off".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway_proc import REPO, Gateway, gateway_config, gateway_python
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import chat_request
from bench.procs import Child, free_port, start
from bench.telemetry_overhead import one_round
from bench.wrk import locate_wrk

VARIANTS = {
    "off": "no limit rules",
    "memory": "rpm + tpm + concurrency + daily and monthly budget, in-memory counters",
    "redis": "the same rule, counters in redis-server on loopback (Lua, one round trip each way)",
}
RULE = {
    "name": "bench",
    "scope": "global",
    "rpm": 10_000_000,
    "tpm": 1_000_000_000,
    "concurrent": 100_000,
    "daily_usd": 1_000_000,
    "monthly_usd": 10_000_000,
}


def say(message: str) -> None:
    print(f"[limits-bench] {message}", file=sys.stderr, flush=True)


def start_variant(python: str, workdir: Path, upstream: str, redis_url: str, variant: str) -> Gateway:
    port = free_port()
    config = gateway_config(workdir, port, upstream, upstream)
    if variant != "off":
        config["limits"] = {"rules": [RULE]}
    if variant == "redis":
        config["state"] = {"backend": "redis", "redis_url": redis_url, "prefix": f"bench{port}:"}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SDK_DISABLED"] = "true"
    child = start(
        "gateway", [python, "-m", "gateway", "serve", "--config", str(path)], workdir / "gw.log", REPO, env
    )
    gateway = Gateway(child, f"http://127.0.0.1:{port}")
    child.wait_listening(port)
    gateway.wait_ready()
    return gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limits_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=300.0, help="offered requests/s (default 300)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured round (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "limits.json")
    args = parser.parse_args(argv)
    redis_binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    wrk, python, nginx = locate_wrk(), gateway_python(), locate_nginx(install=True)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="llm-gateway-limits-bench-") as tmp:
        work = Path(tmp)
        body = work / "chat.json"
        body.write_bytes(chat_request())
        nginx_port, redis_port = free_port(), free_port()
        children: list[Child] = []
        try:
            children.append(start_nginx(nginx, work / "nginx", nginx_port))
            redis = start(
                "redis",
                [
                    redis_binary,
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(work),
                ],
                work / "redis.log",
                REPO,
            )
            children.append(redis)
            redis.wait_listening(redis_port)
            upstream, redis_url = f"http://127.0.0.1:{nginx_port}", f"redis://127.0.0.1:{redis_port}/0"
            variants = list(VARIANTS)
            for r in range(args.rounds):
                for variant in variants if r % 2 == 0 else variants[::-1]:
                    gateway = start_variant(python, work / f"gw-{variant}-{r}", upstream, redis_url, variant)
                    try:
                        row = one_round(wrk, gateway, body, args.rate, args.connections, args.seconds, False)
                    finally:
                        gateway.child.stop()
                    results[variant].append(row)
                    say(f"{variant}: {row}")
        finally:
            for child in reversed(children):
                child.stop()
    med = {
        v: {k: statistics.median(r[k] for r in rows) for k in ("cpu_us_per_request", "p50_ms", "p99_ms")}
        for v, rows in results.items()
    }
    summary = {
        "rate_rps": args.rate,
        "rounds": results,
        "medians": med,
        "added": {v: {k: round(m[k] - med["off"][k], 3) for k in m} for v, m in med.items() if v != "off"},
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("| limits | CPU µs/request | added | p50 ms | added p50 | p99 ms |\n|---|---|---|---|---|---|")
    for v, m in med.items():
        print(
            f"| {v}: {VARIANTS[v]} | {m['cpu_us_per_request']:.0f} | "
            f"{m['cpu_us_per_request'] - med['off']['cpu_us_per_request']:+.0f} | {m['p50_ms']:.2f} | "
            f"{m['p50_ms'] - med['off']['p50_ms']:+.3f} | {m['p99_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
