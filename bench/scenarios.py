"""The measurements: each runs the same load directly against the upstream and through the gateway."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.curl_ttfb import curl_transfers, percentile
from bench.gateway_proc import Gateway
from bench.procs import BenchError, CpuTimes, cpu_seconds, cpu_times
from bench.wrk import WrkResult, run_wrk


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard to drive each measurement."""

    concurrencies: tuple[int, ...] = (1, 16, 64)
    peak_s: float = 10.0
    paced_s: float = 10.0
    warmup_s: float = 2.0
    rates: tuple[float, ...] = ()  # absolute offered rates; empty: `load_fractions` of the gateway's peak
    load_fractions: tuple[float, ...] = (0.3, 0.6)
    stream_concurrency: int = 32
    stream_chunks: int = 50
    stream_delay_ms: float = 2.0
    stream_s: float = 10.0
    ttfb_requests: int = 300
    ttfb_chunks: int = 20
    wrk_threads: int = 1


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where each kind of request goes, directly and through the gateway, and the bodies it sends."""

    direct_chat: str
    gateway_chat: str
    direct_stream: str
    gateway_stream: str
    chat_body: Path
    stream_body_with_usage: Path
    stream_body_without_usage: Path


@dataclass(frozen=True, slots=True)
class GatewayRun:
    """A wrk run through the gateway with the gateway's CPU time over the run (audit drained):
    its own process and its children (the audit store process)."""

    wrk: WrkResult
    cpu: CpuTimes

    @property
    def cpu_s(self) -> float:
        return self.cpu.total_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.per_request_ms(self.cpu.total_s)

    def per_request_ms(self, cpu_s: float) -> float:
        return cpu_s * 1000 / self.wrk.requests if self.wrk.requests else float("nan")


@dataclass
class Session:
    """One bench run's tools and targets; collects every failed check instead of stopping at it."""

    wrk: str
    curl: str
    gateway: Gateway
    endpoints: Endpoints
    plan: Plan
    problems: list[str] = field(default_factory=list)
    gateway_requests: int = 0  # every request wrk or curl completed through the gateway, warm-ups included

    def say(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def check(self, label: str, result: WrkResult) -> None:
        if result.error_count or result.requests == 0:
            self.problems.append(f"{label}: {result.requests} requests, errors {result.errors}")

    def direct(
        self,
        label: str,
        url: str,
        body: Path,
        connections: int,
        duration_s: float,
        rate: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> WrkResult:
        result = run_wrk(self.wrk, url, body, connections, duration_s, self.plan.wrk_threads, rate, headers)
        self.check(f"direct {label}", result)
        return result

    def through_gateway(
        self,
        label: str,
        url: str,
        body: Path,
        connections: int,
        duration_s: float,
        rate: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> GatewayRun:
        """Gateway CPU is read before wrk starts and after the audit queue has drained."""
        self.gateway.wait_audit_drained()
        before = cpu_times(self.gateway.pid)
        result = run_wrk(self.wrk, url, body, connections, duration_s, self.plan.wrk_threads, rate, headers)
        self.gateway.wait_audit_drained()
        cpu = cpu_times(self.gateway.pid) - before
        self.gateway_requests += result.requests
        self.check(f"gateway {label}", result)
        return GatewayRun(result, cpu)

    def warm_up(self, url: str, body: Path, connections: int, headers: dict[str, str] | None = None) -> None:
        result = run_wrk(
            self.wrk, url, body, connections, self.plan.warmup_s, self.plan.wrk_threads, headers=headers
        )
        if url.startswith(self.gateway.base_url):
            self.gateway_requests += result.requests


def idle_cpu_percent(gateway: Gateway, seconds: float = 3.0) -> float:
    """The gateway's own CPU use while nothing is sent (timers, audit writer, chDB threads)."""
    before, start = cpu_seconds(gateway.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(gateway.pid) - before) / (time.monotonic() - start) * 100


def sanity_check(session: Session) -> None:
    """One request of each kind both ways: 200, and the gateway's request id on the proxied ones."""
    ep = session.endpoints
    cases = [
        (ep.direct_chat, ep.gateway_chat, ep.chat_body),
        (ep.direct_stream, ep.gateway_stream, ep.stream_body_without_usage),
        (ep.direct_stream, ep.gateway_stream, ep.stream_body_with_usage),
    ]
    for direct_url, gateway_url, body in cases:
        (direct,) = curl_transfers(session.curl, direct_url, body, 1)
        (via,) = curl_transfers(session.curl, gateway_url, body, 1)
        session.gateway_requests += 1
        if direct.status != 200 or via.status != 200:
            raise BenchError(
                f"{body.name}: status {direct.status} direct, {via.status} via the gateway "
                f"(see {session.gateway.child.log_path})"
            )
        if not via.request_id:
            raise BenchError(f"{gateway_url}: no x-gateway-request-id header on the proxied response")
        if direct.size != via.size:
            raise BenchError(f"{body.name}: {direct.size} bytes direct but {via.size} via the gateway")


def non_streaming(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Peak throughput and paced latency of chat completions at each concurrency."""
    plan, ep = session.plan, session.endpoints
    peaks: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    for c in plan.concurrencies:
        session.say(f"non-streaming c={c}: warm-up, peak direct, peak via gateway")
        session.warm_up(ep.direct_chat, ep.chat_body, c)
        session.warm_up(ep.gateway_chat, ep.chat_body, c)
        direct = session.direct(f"peak c={c}", ep.direct_chat, ep.chat_body, c, plan.peak_s)
        via = session.through_gateway(f"peak c={c}", ep.gateway_chat, ep.chat_body, c, plan.peak_s)
        peaks.append(_row(c, direct, via))
        rates = plan.rates or tuple(max(1.0, round(f * via.wrk.rps, -1)) for f in plan.load_fractions)
        for rate in rates:
            session.say(f"non-streaming c={c}: paced at {rate:g} rps, direct and via gateway")
            direct = session.direct(
                f"paced {rate:g} rps c={c}", ep.direct_chat, ep.chat_body, c, plan.paced_s, rate
            )
            via = session.through_gateway(
                f"paced {rate:g} rps c={c}", ep.gateway_chat, ep.chat_body, c, plan.paced_s, rate
            )
            paced.append({**_row(c, direct, via), "offered_rps": rate})
    return {"peak": peaks, "paced": paced}


def streaming(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Streamed chat completions: closed-loop load (bytes/s, CPU per stream) and sequential TTFB."""
    plan, ep = session.plan, session.endpoints
    load_headers = {
        "x-bench-chunks": str(plan.stream_chunks),
        "x-bench-delay-ms": f"{plan.stream_delay_ms:g}",
    }
    ttfb_headers = {"x-bench-chunks": str(plan.ttfb_chunks), "x-bench-delay-ms": "0"}
    variants = [
        ("client asks for usage", ep.stream_body_with_usage),
        ("gateway adds usage", ep.stream_body_without_usage),
    ]
    loads: list[dict[str, Any]] = []
    ttfb: list[dict[str, Any]] = []
    c = plan.stream_concurrency
    for name, body in variants:
        session.say(f"streaming ({name}) c={c}: warm-up, direct, via gateway")
        session.warm_up(ep.direct_stream, body, c, load_headers)
        session.warm_up(ep.gateway_stream, body, c, load_headers)
        direct = session.direct(
            f"stream ({name})", ep.direct_stream, body, c, plan.stream_s, headers=load_headers
        )
        via = session.through_gateway(
            f"stream ({name})", ep.gateway_stream, body, c, plan.stream_s, headers=load_headers
        )
        loads.append(
            {
                **_row(c, direct, via),
                "variant": name,
                "chunks": plan.stream_chunks,
                "delay_ms": plan.stream_delay_ms,
            }
        )
        session.say(
            f"streaming ({name}): time to first byte, {plan.ttfb_requests} sequential requests each way"
        )
        ttfb.append(
            {
                "variant": name,
                "requests": plan.ttfb_requests,
                "chunks": plan.ttfb_chunks,
                "direct": _ttfb(session, ep.direct_stream, body, ttfb_headers),
                "gateway": _ttfb(session, ep.gateway_stream, body, ttfb_headers),
            }
        )
        session.gateway_requests += plan.ttfb_requests
    return {"load": loads, "ttfb": ttfb}


def _ttfb(session: Session, url: str, body: Path, headers: dict[str, str]) -> dict[str, float]:
    transfers = curl_transfers(session.curl, url, body, session.plan.ttfb_requests, headers)
    bad = [t for t in transfers if t.status != 200]
    if bad or len(transfers) != session.plan.ttfb_requests:
        session.problems.append(f"ttfb {url}: {len(transfers)} transfers, {len(bad)} not 200")
    times = [t.ttfb_ms for t in transfers] or [float("nan")]
    return {
        "p50_ms": percentile(times, 50),
        "p90_ms": percentile(times, 90),
        "p99_ms": percentile(times, 99),
        "mean_ms": sum(times) / len(times),
    }


def _row(concurrency: int, direct: WrkResult, via: GatewayRun) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "direct": direct.as_dict(),
        "gateway": via.wrk.as_dict(),
        "gateway_cpu_s": round(via.cpu_s, 3),
        "gateway_cpu_ms_per_request": round(via.cpu_ms_per_request, 4),
        "gateway_cpu_s_per_1k_requests": round(via.cpu_ms_per_request, 4),  # ms/request == s/1000 requests
        # the total above = the gateway process + its children (the audit store process)
        "gateway_process_cpu_ms_per_request": round(via.per_request_ms(via.cpu.own_s), 4),
        "gateway_children_cpu_ms_per_request": round(via.per_request_ms(via.cpu.children_s), 4),
        "added_p50_ms": round(via.wrk.p50_ms - direct.p50_ms, 3),
        "added_p99_ms": round(via.wrk.p99_ms - direct.p99_ms, 3),
    }
