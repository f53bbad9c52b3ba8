"""`python -m bench.floor`: what aiohttp and uvloop cost by themselves, next to the gateway.

The *floor* is the cheapest proxy the gateway could be with the same libraries: an aiohttp server
on uvloop that reads the body, sends it upstream with one shared aiohttp `ClientSession`, reads
the response and answers with it in one write. No audit, guards, hashing or parsing. Same
upstream (nginx), same paced wrk load at c=64, rounds alternating direct / floor / gateway so
drift on a shared machine hits them alike. The gateway's own work is its figures minus the
floor's; the floor's own figures minus direct are what any aiohttp proxy adds on this machine.

`python -m bench.floor serve --port P --upstream URL` runs the floor proxy alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.gateway_proc import REPO, gateway_python, start_gateway
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import CHAT_PATH, chat_request
from bench.procs import Child, cpu_times, free_port, start
from bench.wrk import locate_wrk, run_wrk

_FORWARDED = ("Content-Type", "Authorization")
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.Response:
    """/{provider}/{path}: the body upstream to /{path}, the answer back; nothing else."""
    body = await request.read()
    headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
    url = request.app[UPSTREAM] + "/" + request.match_info["path"]
    async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as upstream:
        data = await upstream.read()
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        return web.Response(status=upstream.status, body=data, headers={"Content-Type": content_type})


def floor_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("*", "/{provider}/{path:.*}", relay)

    async def session(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
            app[SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    return app


def serve(port: int, upstream: str) -> None:
    import uvloop

    uvloop.install()
    web.run_app(floor_app(upstream), host="127.0.0.1", port=port, access_log=None, print=None)


def say(message: str) -> None:
    print(f"[floor-bench] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    python = gateway_python()
    wrk = locate_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-floor-"))
    body = workdir / "chat.json"
    body.write_bytes(chat_request())
    results: dict[str, Any] = {
        "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "rates": {},
    }
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)  # last: after every process is stopped
        nginx_port = free_port()
        nginx = start_nginx(locate_nginx(install=not args.no_install), workdir / "nginx", nginx_port)
        stack.callback(nginx.stop)
        upstream = f"http://127.0.0.1:{nginx_port}"
        floor_port = free_port()
        floor = start(
            "floor proxy",
            [python, "-m", "bench.floor", "serve", "--port", str(floor_port), "--upstream", upstream],
            workdir / "floor.log",
            cwd=REPO,
        )
        stack.callback(floor.stop)
        floor.wait_listening(floor_port)
        gateway = start_gateway(python, workdir / "gateway", free_port(), upstream, upstream)
        stack.callback(gateway.child.stop)
        targets: dict[str, tuple[str, Child | None]] = {
            "direct": (upstream + CHAT_PATH, None),
            "floor": (f"http://127.0.0.1:{floor_port}/openai{CHAT_PATH}", floor),
            "gateway": (f"{gateway.base_url}/openai{CHAT_PATH}", gateway.child),
        }
        for url, _ in targets.values():  # warm-up: connections, caches, the audit store
            run_wrk(wrk, url, body, args.concurrency, 2, rate_rps=args.rates[0])
        gateway.wait_audit_drained()
        for rate in args.rates:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for round_no in range(args.rounds):
                names = list(targets) if round_no % 2 == 0 else list(reversed(targets))
                for name in names:
                    url, child = targets[name]
                    before = cpu_times(child.pid) if child is not None else None
                    result = run_wrk(wrk, url, body, args.concurrency, args.duration, rate_rps=rate)
                    if name == "gateway":
                        gateway.wait_audit_drained()
                    cpu_us = (
                        (cpu_times(child.pid) - before).total_s * 1e6 / result.requests
                        if child is not None and before is not None and result.requests
                        else 0.0
                    )
                    row = {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}
                    runs[name].append({**row, "cpu_us": cpu_us})
                    say(
                        f"{rate:g} rps round {round_no}: {name} p50 {result.p50_ms:.2f} p99 "
                        f"{result.p99_ms:.2f} ms, {cpu_us:.0f} us CPU/request"
                    )
            results["rates"][f"{rate:g}"] = {
                name: {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
                for name, rows in runs.items()
            }
    results["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return results


def markdown(results: dict[str, Any]) -> str:
    out = [
        "| offered rps | | p50 ms | p99 ms | CPU µs/request (process + children) |",
        "|---:|---|---:|---:|---:|",
    ]
    for rate, by_name in results["rates"].items():
        for name, row in by_name.items():
            cpu = f"{row['cpu_us']:.0f}" if name != "direct" else "—"
            out.append(f"| {rate} | {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cpu} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="run the floor proxy alone")
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--upstream", required=True)
    parser.add_argument("--rates", default="400,700", help="paced offered rates in requests/s (400,700)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "floor.json")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx-light")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.upstream)
        return 0
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    results = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
