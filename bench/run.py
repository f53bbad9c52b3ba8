"""`python -m bench.run`: chat completions direct vs through llm-gateway, same machine, same run.

Starts nginx (fixed non-streaming upstream), the SSE upstream and the gateway on free loopback ports
in a temporary directory, drives them with wrk and curl, prints Markdown tables and writes JSON.
Every process it starts is stopped on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench import profile, report
from bench.curl_ttfb import locate_curl
from bench.gateway_proc import REPO, Gateway, gateway_python, start_gateway
from bench.nginx import locate_nginx, start_nginx
from bench.payloads import CHAT_PATH, chat_request
from bench.procs import BenchError, Child, children_peak_rss_mb, free_port, peak_rss_mb, start
from bench.scenarios import Endpoints, Plan, Session, idle_cpu_percent, non_streaming, sanity_check, streaming
from bench.wrk import locate_wrk, run_wrk

QUICK = dict(peak_s=3.0, paced_s=3.0, warmup_s=1.0, stream_s=3.0, ttfb_requests=50)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs and 50 TTFB requests: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "latest.json",
        help="JSON results file (default: bench/results/latest.json)",
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="non-streaming connection counts (default 1,16,64)"
    )
    parser.add_argument(
        "--rates",
        default="",
        help="paced offered rates in requests/s, e.g. 200,500 (default: --load-fractions of "
        "the gateway's measured peak at each concurrency)",
    )
    parser.add_argument("--load-fractions", default="0.3,0.6", help="default 0.3,0.6")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, --quick 3)")
    parser.add_argument("--stream-concurrency", type=int, default=32, help="connections (default 32)")
    parser.add_argument(
        "--stream-chunks", type=int, default=50, help="content chunks per stream (default 50)"
    )
    parser.add_argument("--stream-delay-ms", type=float, default=2.0, help="between chunks (default 2)")
    parser.add_argument(
        "--ttfb-requests", type=int, help="sequential curl requests per TTFB series (default 300)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="after the measurements, record the gateway with py-spy under closed-loop load at "
        "the highest concurrency into FILE (speedscope JSON) and print its hotspots",
    )
    parser.add_argument(
        "--telemetry", action="store_true", help="gateway telemetry on (default off: the proxy core alone)"
    )
    parser.add_argument("--skip-streaming", action="store_true", help="only the non-streaming measurements")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (configs, logs, chDB)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx-light")
    return parser.parse_args(argv)


def numbers(text: str) -> tuple[float, ...]:
    """`"0.3, 0.6"` -> (0.3, 0.6)."""
    return tuple(float(x) for x in text.split(",") if x.strip())


def build_plan(args: argparse.Namespace) -> Plan:
    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.duration:
        overrides.update(peak_s=args.duration, paced_s=args.duration, stream_s=args.duration)
    if args.ttfb_requests:
        overrides["ttfb_requests"] = args.ttfb_requests
    return Plan(
        concurrencies=tuple(int(c) for c in numbers(args.concurrency)),
        rates=numbers(args.rates),
        load_fractions=numbers(args.load_fractions),
        stream_concurrency=args.stream_concurrency,
        stream_chunks=args.stream_chunks,
        stream_delay_ms=args.stream_delay_ms,
        **overrides,
    )


class Stopped(Exception):
    """SIGTERM: unwind like Ctrl-C so every started process is stopped."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped(f"signal {signum}")


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


def write_bodies(workdir: Path) -> dict[str, Path]:
    bodies = {
        "chat": chat_request(),
        "stream_with_usage": chat_request(stream=True, include_usage=True),
        "stream_without_usage": chat_request(stream=True),
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = workdir / f"{name}.json"
        paths[name].write_bytes(body)
    return paths


def metadata(plan: Plan) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no commit"
    if git("status", "--porcelain", "--", "gateway"):
        commit += " + uncommitted changes"
    return {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "gateway_commit": commit,
        "wrk_threads": plan.wrk_threads,
        "durations": f"{plan.peak_s:g}s peak, {plan.paced_s:g}s paced, {plan.stream_s:g}s stream, "
        f"{plan.warmup_s:g}s warm-up",
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
    }


def measure(args: argparse.Namespace, plan: Plan, workdir: Path) -> dict[str, Any]:
    tools = {
        "wrk": locate_wrk(),
        "curl": locate_curl(),
        "nginx": locate_nginx(install=not args.no_install),
        "python": gateway_python(),
    }
    py_spy = profile.locate_py_spy() if args.profile else ""
    results: dict[str, Any] = {"meta": metadata(plan)}
    bodies = write_bodies(workdir)
    nginx_port, sse_port, gateway_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running(start_nginx(tools["nginx"], workdir / "nginx", nginx_port)))
        sse = stack.enter_context(
            running(
                start(
                    "sse upstream",
                    [tools["python"], "-m", "bench.sse_upstream", "--port", str(sse_port)],
                    workdir / "sse_upstream.log",
                    cwd=REPO,
                )
            )
        )
        sse.wait_listening(sse_port)
        direct_base, sse_base = f"http://127.0.0.1:{nginx_port}", f"http://127.0.0.1:{sse_port}"
        gateway = start_gateway(
            tools["python"], workdir / "gateway", gateway_port, direct_base, sse_base, args.telemetry
        )
        stack.enter_context(running(gateway.child))
        endpoints = Endpoints(
            direct_chat=direct_base + CHAT_PATH,
            gateway_chat=f"{gateway.base_url}/openai{CHAT_PATH}",
            direct_stream=sse_base + CHAT_PATH,
            gateway_stream=f"{gateway.base_url}/openai-stream{CHAT_PATH}",
            chat_body=bodies["chat"],
            stream_body_with_usage=bodies["stream_with_usage"],
            stream_body_without_usage=bodies["stream_without_usage"],
        )
        session = Session(tools["wrk"], tools["curl"], gateway, endpoints, plan)
        sanity_check(session)
        session.say(f"gateway pid {gateway.pid} ready; measuring its idle CPU")
        idle = idle_cpu_percent(gateway)
        results["non_streaming"] = non_streaming(session)
        results["streaming"] = {"load": [], "ttfb": []} if args.skip_streaming else streaming(session)
        audit = gateway.wait_audit_drained()
        results["gateway_process"] = {
            "peak_rss_mb": round(peak_rss_mb(gateway.pid), 1),
            "peak_rss_children_mb": round(children_peak_rss_mb(gateway.pid), 1),
            "telemetry": args.telemetry,
            "idle_cpu_percent": round(idle, 2),
            "audit": audit,
            "requests_completed": session.gateway_requests,
        }
        results["meta"]["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        results["problems"] = session.problems
        if args.profile:
            results["profile"] = run_profile(py_spy, gateway, endpoints, plan, args.profile)
    return results


def run_profile(py_spy: str, gateway: Gateway, endpoints: Endpoints, plan: Plan, out: Path) -> dict[str, Any]:
    """A separate, unrecorded closed-loop run with py-spy attached (sampling perturbs the timings)."""
    c = max(plan.concurrencies)
    print(
        f"[bench] profiling the gateway with py-spy at c={c} for {plan.peak_s:g}s",
        file=sys.stderr,
        flush=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = profile.start_recording(py_spy, gateway.pid, plan.peak_s, out)
    try:
        run_wrk(locate_wrk(), endpoints.gateway_chat, endpoints.chat_body, c, plan.peak_s + 1)
        _, err = recorder.communicate(timeout=plan.peak_s + 60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({recorder.returncode}): {err.decode(errors='replace').strip()}")
    return {"speedscope": str(out), "concurrency": c, "hotspots": profile.hotspots(out)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    keep = args.keep_workdir
    try:
        results = measure(args, plan, workdir)
    except (KeyboardInterrupt, Stopped) as exc:
        print(
            f"bench: interrupted ({str(exc) or type(exc).__name__}); every started process is stopped",
            file=sys.stderr,
        )
        return 130
    except BenchError as exc:
        keep = True
        print(f"bench: {exc}\nbench: logs and configs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report.markdown(results))
    if "profile" in results:
        print()
        print(profile.markdown(results["profile"]["hotspots"]))
    print(f"\n(JSON: {args.out}{'; workdir kept: ' + str(workdir) if keep else ''})", file=sys.stderr)
    if results["problems"]:
        print("bench: some runs had errors (see Problems above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
