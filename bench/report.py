"""The Markdown tables a bench run prints (and the README quotes)."""

from __future__ import annotations

from typing import Any

TARGET_CONCURRENCY = 64
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
SATURATION_SHARE = 0.95  # achieved below this share of the offered rate: saturated


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _pair(side: dict[str, Any]) -> str:
    return f"{_ms(side['p50_ms'])} / {_ms(side['p99_ms'])}"


def _saturated(row: dict[str, Any]) -> bool:
    """The gateway did not keep up with the offered rate, so its latency is queueing, not overhead."""
    return bool(row["gateway"]["rps"] < SATURATION_SHARE * row["offered_rps"])


def _cpu(row: dict[str, Any]) -> str:
    """CPU ms per request: the total, and how it splits between the gateway process and its
    children (the audit store process)."""
    total = f"{row['gateway_cpu_ms_per_request']:.3f}"
    if "gateway_process_cpu_ms_per_request" not in row:  # results from before the split
        return total
    own, children = row["gateway_process_cpu_ms_per_request"], row["gateway_children_cpu_ms_per_request"]
    return f"{total} ({own:.3f} + {children:.3f})"


def _target(row: dict[str, Any]) -> str:
    if row["concurrency"] != TARGET_CONCURRENCY:
        return "saturated" if _saturated(row) else ""
    met = row["added_p50_ms"] < TARGET_ADDED_P50_MS and row["added_p99_ms"] < TARGET_ADDED_P99_MS
    verdict = "met" if met else "**missed**"
    return f"{verdict} (saturated: not a fair test)" if _saturated(row) else verdict


def markdown(results: dict[str, Any]) -> str:
    meta, out = results["meta"], []
    out.append(
        f"Run {meta['started']} on {meta['cpus']} CPUs (load average {meta['loadavg_before']} before, "
        f"{meta['loadavg_after']} after); gateway {meta['gateway_commit']}; wrk -t{meta['wrk_threads']}; "
        f"durations {meta['durations']}."
    )
    out.append("")
    ns = results["non_streaming"]
    out.append("**Non-streaming `POST /v1/chat/completions` (1 KB request), peak throughput (closed loop)**")
    out.append("")
    out.append(
        "| conc. | direct rps | gateway rps | gateway p50 / p99 ms "
        "| gateway CPU ms/req (= s per 1k req): total (process + audit child) |"
    )
    out.append("|---:|---:|---:|---:|---:|")
    for row in ns["peak"]:
        out.append(
            f"| {row['concurrency']} | {row['direct']['rps']:,.0f} | {row['gateway']['rps']:,.0f} | "
            f"{_pair(row['gateway'])} | {_cpu(row)} |"
        )
    out.append("")
    out.append("**Non-streaming latency at fixed offered rates (paced, not CO-corrected); ms as p50 / p99**")
    out.append("")
    out.append(
        "| conc. | offered rps | gateway achieved rps | direct | gateway | added "
        "| gateway CPU ms/req: total (process + audit child) "
        f"| note; target at c={TARGET_CONCURRENCY} (added p50 < {TARGET_ADDED_P50_MS:g}, "
        f"p99 < {TARGET_ADDED_P99_MS:g}) |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in ns["paced"]:
        out.append(
            f"| {row['concurrency']} | {row['offered_rps']:,.0f} | {row['gateway']['rps']:,.0f} | "
            f"{_pair(row['direct'])} | {_pair(row['gateway'])} | "
            f"{_ms(row['added_p50_ms'])} / {_ms(row['added_p99_ms'])} | "
            f"{_cpu(row)} | {_target(row)} |"
        )
    out.append("")
    st = results["streaming"]
    if st["load"]:
        first = st["load"][0]
        out.append(
            f"**Streaming, closed loop at c={first['concurrency']}: {first['chunks']} content chunks "
            f"{first['delay_ms']:g} ms apart per stream; stream duration as p50 / p99 ms**"
        )
        out.append("")
        out.append(
            "| variant | direct streams/s | gateway streams/s | direct MB/s | gateway MB/s "
            "| direct duration | gateway duration | gateway CPU ms/stream: total (process + audit child) |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in st["load"]:
            d, g = row["direct"], row["gateway"]
            out.append(
                f"| {row['variant']} | {d['rps']:,.0f} | {g['rps']:,.0f} | "
                f"{d['bytes'] / d['duration_s'] / 1e6:.2f} | {g['bytes'] / g['duration_s'] / 1e6:.2f} | "
                f"{_pair(d)} | {_pair(g)} | {_cpu(row)} |"
            )
        out.append("")
    if st["ttfb"]:
        first = st["ttfb"][0]
        out.append(
            f"**Streaming time to first byte (curl, {first['requests']} sequential requests on one "
            f"connection, {first['chunks']} chunks); ms as p50 / p99**"
        )
        out.append("")
        out.append("| variant | direct | gateway | added |")
        out.append("|---|---:|---:|---:|")
        for row in st["ttfb"]:
            d, g = row["direct"], row["gateway"]
            out.append(
                f"| {row['variant']} | {_pair(d)} | {_pair(g)} | "
                f"{_ms(g['p50_ms'] - d['p50_ms'])} / {_ms(g['p99_ms'] - d['p99_ms'])} |"
            )
        out.append("")
    gw = results["gateway_process"]
    audit = gw["audit"]
    own_mb, children_mb = gw["peak_rss_mb"], gw.get("peak_rss_children_mb", 0.0)
    out.append(
        f"Peak RSS (VmHWM) after all runs: gateway process {own_mb:.0f} MiB + audit store process "
        f"{children_mb:.0f} MiB = {own_mb + children_mb:.0f} MiB; "
        f"telemetry {'on' if gw.get('telemetry') else 'off'}; idle CPU "
        f"{gw['idle_cpu_percent']:.1f}%; audit rows written {audit.get('written', 0):,} + spooled "
        f"{audit.get('spooled', 0):,} for {gw['requests_completed']:,} requests completed through it "
        "(rows also cover requests cut off when a wrk run ends)."
    )
    if results["problems"]:
        out.append("")
        out.append("**Problems:** " + "; ".join(results["problems"]))
    return "\n".join(out)
