"""`python -m bench.telemetry_overhead`: gateway CPU per request with telemetry off vs on.

"On" is the full production setting: spans for every request (SERVER, GenAI, HTTP client)
exported over OTLP/HTTP, metrics pushed over OTLP and scraped from /metrics every few seconds.
"Off" is `OTEL_SDK_DISABLED=true`. Same upstream (nginx), same fixed offered rate (wrk, paced),
rounds alternating off/on so drift on a shared machine hits both alike; the figure is the
difference of the medians, in microseconds of gateway CPU (process and children) per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.gateway_proc import REPO, Gateway, gateway_config, gateway_python
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import CHAT_PATH, chat_request
from bench.procs import Child, cpu_seconds, free_port, start
from bench.wrk import locate_wrk, run_wrk


def say(message: str) -> None:
    print(f"[telemetry-bench] {message}", file=sys.stderr, flush=True)


VARIANTS = {
    "off": "OTEL_SDK_DISABLED=true",
    "metrics": "metrics only: /metrics scraped every 5 s, no spans",
    "full": "spans (SERVER, GenAI, HTTP client) + metrics, both pushed over OTLP/HTTP, /metrics scraped",
}


def start_variant(
    python: str,
    workdir: Path,
    upstream: str,
    sink: str,
    variant: str,
    wrapper: tuple[str, ...] = (),
    env_overrides: dict[str, str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Gateway:
    """A gateway with telemetry `variant`; `wrapper` prefixes the command (e.g. valgrind)."""
    port = free_port()
    config = gateway_config(workdir, port, upstream, upstream)
    telemetry_on = variant != "off"
    config["telemetry"] = {"enabled": telemetry_on, "traces": variant == "full"}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gateway.yaml"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if variant == "full":
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=sink,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_METRIC_EXPORT_INTERVAL="5000",
            OTEL_SERVICE_NAME="llm-gateway-bench",
        )
    elif variant == "off":
        env["OTEL_SDK_DISABLED"] = "true"
    env.update(env_overrides or {})
    child = start(
        "gateway",
        [*wrapper, python, "-m", "gateway", "serve", "--config", str(path)],
        workdir / "gateway.log",
        REPO,
        env,
    )
    gateway = Gateway(child, f"http://127.0.0.1:{port}")
    try:
        child.wait_listening(port, ready_timeout_s)
        gateway.wait_ready(ready_timeout_s)
    except BaseException:
        child.stop()
        raise
    return gateway


def scrape_every(url: str, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).read()


def one_round(
    wrk: str, gateway: Gateway, body: Path, rate: float, connections: int, seconds: float, scrape: bool
) -> dict[str, Any]:
    url = f"{gateway.base_url}/openai{CHAT_PATH}"
    run_wrk(wrk, url, body, connections, 2.0)  # warm-up: connections, caches, JIT-free but lazy imports
    gateway.wait_audit_drained()
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_every, args=(gateway.base_url + "/metrics", 5.0, stop))
    if scrape:
        scraper.start()
    before = cpu_seconds(gateway.pid)
    result = run_wrk(wrk, url, body, connections, seconds, 1, rate)
    gateway.wait_audit_drained()
    time.sleep(0.5)  # let the span batch of the last requests go out (counted: it is their cost)
    cpu = cpu_seconds(gateway.pid) - before
    stop.set()
    if scrape:
        scraper.join()
    if result.error_count or not result.requests:
        raise RuntimeError(f"wrk: {result.requests} requests, errors {result.errors}")
    return {
        "requests": result.requests,
        "cpu_us_per_request": round(cpu * 1e6 / result.requests, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.telemetry_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=300.0, help="offered requests/s (default 300)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    parser.add_argument("--variants", default="off,metrics,full", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "telemetry.json")
    args = parser.parse_args(argv)
    wrk, python = locate_wrk(), gateway_python()
    nginx = locate_nginx(install=True)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "off" not in variants:
        parser.error(f"--variants: 'off' plus any of {', '.join(VARIANTS)}; unknown: {sorted(unknown)}")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(prefix="llm-gateway-telemetry-bench-") as tmp:
        work = Path(tmp)
        body = work / "chat.json"
        body.write_bytes(chat_request())
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
            # Rounds alternate direction (a b c, c b a, …) so slow drift on a shared box hits all alike.
            for r in range(args.rounds):
                for variant in variants if r % 2 == 0 else list(reversed(variants)):
                    gateway = start_variant(python, work / f"gw-{variant}-{r}", upstream, sink_url, variant)
                    try:
                        row = one_round(
                            wrk, gateway, body, args.rate, args.connections, args.seconds, variant != "off"
                        )
                    finally:
                        gateway.child.stop()
                    results[variant].append(row)
                    say(f"{variant}: {row}")
            with urllib.request.urlopen(sink_url + "/stats", timeout=5) as resp:
                exports = json.loads(resp.read())["exports"]
        finally:
            for child in reversed(children):
                child.stop()
    medians = {v: statistics.median(r["cpu_us_per_request"] for r in rows) for v, rows in results.items()}
    summary = {
        "rate_rps": args.rate,
        "connections": args.connections,
        "seconds_per_round": args.seconds,
        "variants": {v: VARIANTS[v] for v in variants},
        "rounds": results,
        "median_cpu_us_per_request": medians,
        "added_cpu_us_per_request": {
            v: round(m - medians["off"], 1) for v, m in medians.items() if v != "off"
        },
        "otlp_exports_received": exports,
        "loadavg_before": load_before,
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"| telemetry | gateway CPU µs/request (median of {args.rounds}) | added |\n|---|---|---|")
    for v, m in medians.items():
        print(f"| {v}: {VARIANTS[v]} | {m:.0f} | {m - medians['off']:+.0f} |")
    print(f"\nOTLP exports received by the sink: {exports}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
