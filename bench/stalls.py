"""`python -m bench.stalls`: where the gateway's event loop loses time under paced load.

Runs the gateway with a probe inside (`python -m bench.stalls serve --config …` wraps
`gateway.cli.main`): a task that sleeps 2 ms in a loop and records how late it wakes (the
event-loop lag), and `gc.callbacks` that time every collection. Each lag over 2 ms is split by
what the process did meanwhile, from the CPU clocks read around each sleep:

- *loop busy*: the event-loop thread was running (callbacks, request work, a collection);
- *other threads*: other threads of the process ran (the audit writer's threads, holding the GIL);
- *not running*: neither: the process was waiting for a CPU (other processes on the machine).

Then one paced wrk run at c=64 (the issue's target case) against it; the gateway is stopped so
the probe writes its records, and the report covers the run's window only. Writes
`bench/results/stalls.json`. The probe costs a wake-up every 2 ms; the figures of the main bench
come from a gateway without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateway_proc import REPO, Gateway, gateway_config, gateway_python
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import CHAT_PATH, chat_request
from bench.procs import free_port, start
from bench.wrk import locate_wrk, run_wrk

PERIOD_S = 0.002
STALL_S = 0.002  # lags over this are kept with their CPU split
OUT_ENV = "LLM_GATEWAY_STALLS_OUT"


class Probe:
    """Lag samples and collections, with perf_counter timestamps (CLOCK_MONOTONIC: comparable
    across processes, so the bench can cut out its run's window)."""

    def __init__(self) -> None:
        self.lags: list[tuple[float, float]] = []
        self.stalls: list[tuple[float, float, float, float]] = []  # (at, lag, loop cpu, process cpu)
        self.collections: list[tuple[float, int, float]] = []  # (at, generation, seconds)
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            now = time.perf_counter()
            self.collections.append((now, info["generation"], now - self._gc_started))

    async def sample(self) -> None:
        while True:
            wall, loop_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
            await asyncio.sleep(PERIOD_S)
            now = time.perf_counter()
            lag = now - wall - PERIOD_S
            self.lags.append((now, lag))
            if lag > STALL_S:
                self.stalls.append(
                    (now, lag, time.thread_time() - loop_cpu, time.process_time() - process_cpu)
                )

    def dump(self, path: str) -> None:
        data = {"lags": self.lags, "stalls": self.stalls, "collections": self.collections}
        Path(path).write_text(json.dumps(data))


def serve(argv: list[str]) -> int:
    """The gateway with the probe: started with the app, written out when the app shuts down."""
    from aiohttp import web

    from gateway import app as gateway_app
    from gateway import cli

    probe = Probe()
    gc.callbacks.append(probe.on_gc)
    build_app = gateway_app.build_app
    tasks: list[asyncio.Task[None]] = []

    async def start_probe(app: web.Application) -> None:
        tasks.append(asyncio.get_running_loop().create_task(probe.sample()))

    async def stop_probe(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        probe.dump(os.environ[OUT_ENV])

    def probed_app(*args: Any, **kwargs: Any) -> web.Application:
        app = build_app(*args, **kwargs)
        app.on_startup.append(start_probe)
        app.on_cleanup.insert(0, stop_probe)
        return app

    gateway_app.build_app = probed_app  # cli imports it from gateway.app when it serves
    return cli.main(argv)


def summarize(data: dict[str, Any], window: tuple[float, float]) -> dict[str, Any]:
    start_s, end_s = window
    lags = sorted(lag for at, lag in data["lags"] if start_s <= at <= end_s)
    stalls = [s for s in data["stalls"] if start_s <= s[0] <= end_s]
    collections = [c for c in data["collections"] if start_s <= c[0] <= end_s]
    busy = sum(min(loop_cpu, lag + PERIOD_S) for _, lag, loop_cpu, _ in stalls)
    others = sum(max(cpu - loop_cpu, 0.0) for _, _, loop_cpu, cpu in stalls)
    stalled = sum(lag + PERIOD_S for _, lag, _, _ in stalls)

    def pct(q: float) -> float:
        return round(lags[min(int(len(lags) * q), len(lags) - 1)] * 1000, 2) if lags else 0.0

    by_generation: dict[str, dict[str, float]] = {}
    for _, generation, seconds in collections:
        entry = by_generation.setdefault(str(generation), {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
        entry["count"] += 1
        entry["total_ms"] = round(entry["total_ms"] + seconds * 1000, 2)
        entry["max_ms"] = round(max(entry["max_ms"], seconds * 1000), 2)
    return {
        "lag_ms": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
        "stalls_over_2ms": len(stalls),
        "stalls_over_5ms": sum(1 for s in stalls if s[1] > 0.005),
        "stalled_ms": round(stalled * 1000, 1),
        "loop_busy_ms": round(busy * 1000, 1),
        "other_threads_ms": round(others * 1000, 1),
        "not_running_ms": round(max(stalled - busy - others, 0.0) * 1000, 1),
        "collections": by_generation,
        "worst": [  # the longest stalls: lag, loop thread CPU, process CPU (ms) over the lag + period
            [round(lag * 1000, 1), round(loop_cpu * 1000, 1), round(cpu * 1000, 1)]
            for _, lag, loop_cpu, cpu in sorted(stalls, key=lambda s: -s[1])[:8]
        ],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    python, wrk = gateway_python(), locate_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-stalls-"))
    body = workdir / "chat.json"
    body.write_bytes(chat_request())
    out = workdir / "probe.json"
    loadavg_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)  # last: after every process is stopped
        nginx_port, port = free_port(), free_port()
        nginx = start_nginx(locate_nginx(install=not args.no_install), workdir / "nginx", nginx_port)
        stack.callback(nginx.stop)
        upstream = f"http://127.0.0.1:{nginx_port}"
        config = workdir / "gateway.yaml"
        config.write_text(json.dumps(gateway_config(workdir, port, upstream, upstream)))
        child = start(
            "gateway (probed)",
            [python, "-m", "bench.stalls", "serve", "--config", str(config)],
            workdir / "gateway.log",
            cwd=REPO,
            env={**os.environ, OUT_ENV: str(out)},
        )
        stack.callback(child.stop)
        gateway = Gateway(child, f"http://127.0.0.1:{port}")
        child.wait_listening(port)
        gateway.wait_ready()
        url = f"{gateway.base_url}/openai{CHAT_PATH}"
        run_wrk(wrk, url, body, args.concurrency, 2, rate_rps=args.rate)  # warm-up
        gateway.wait_audit_drained()
        window_start = time.perf_counter()
        result = run_wrk(wrk, url, body, args.concurrency, args.duration, rate_rps=args.rate)
        window = (window_start, time.perf_counter())
        gateway.wait_audit_drained()
        child.stop()
        data = json.loads(out.read_text())
    return {
        "loadavg_before": loadavg_before,
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "rate_rps": args.rate,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "latency_ms": {
            "p50": result.p50_ms,
            "p99": result.p99_ms,
            "p999": result.p999_ms,
            "max": result.max_ms,
        },
        "achieved_rps": round(result.rps, 1),
        "loop": summarize(data, window),
    }


def markdown(r: dict[str, Any]) -> str:
    loop, lat = r["loop"], r["latency_ms"]
    gcs = ", ".join(
        f"gen {g}: {c['count']} ({c['total_ms']:.1f} ms, max {c['max_ms']:.2f})"
        for g, c in sorted(loop["collections"].items())
    )
    return "\n".join(
        [
            f"c={r['concurrency']}, {r['rate_rps']:g} rps offered ({r['achieved_rps']:g} achieved), "
            f"{r['duration_s']:g} s; load average {r['loadavg_before']} before, {r['loadavg_after']} after",
            f"- latency p50 / p99 / p99.9 / max: {lat['p50']:.2f} / {lat['p99']:.2f} / "
            f"{lat['p999']:.2f} / {lat['max']:.2f} ms",
            f"- event-loop lag p50 / p99 / p99.9 / max: {loop['lag_ms']['p50']} / {loop['lag_ms']['p99']} / "
            f"{loop['lag_ms']['p999']} / {loop['lag_ms']['max']} ms",
            f"- stalls over 2 ms: {loop['stalls_over_2ms']} (over 5 ms: {loop['stalls_over_5ms']}), "
            f"{loop['stalled_ms']} ms in all: loop busy {loop['loop_busy_ms']} ms, other threads "
            f"{loop['other_threads_ms']} ms, process not running {loop['not_running_ms']} ms",
            f"- garbage collections: {gcs or 'none'}",
            "- longest stalls, ms as lag (loop thread CPU, process CPU): "
            + ", ".join(f"{lag} ({loop_cpu}, {cpu})" for lag, loop_cpu, cpu in loop["worst"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400.0, help="paced offered rate, requests/s (400)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stalls.json")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx-light")
    args = parser.parse_args(argv)
    results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
