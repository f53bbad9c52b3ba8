"""`python -m bench.audit_stall`: how long the audit store stalls the gateway's event loop.

An AuditWriter on a real chDB store takes N records per second (the request path's `submit`)
while a probe keeps the same event loop busy: it yields to the loop (`await asyncio.sleep(0)`)
and records the time between two of its turns. A gap is time the loop could not run a request's
callback: another thread held the GIL, or the OS ran something else on this core. Compared for
`audit.isolation: thread` (store on a thread of this process) and `process` (store in a child
process), with a baseline without any audit writer (the machine's own noise), in interleaved
rounds. Also reported: the CPU the audit work costs inside the gateway process and in the child.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import cpu_times
from gateway.audit.process import ProcessStore
from gateway.audit.settings import AuditSettings
from gateway.audit.writer import AuditWriter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.audit.support import make_record  # noqa: E402  (a realistic record with every field)

VARIANTS = ("none", "thread", "process")  # "none": the same probe and feed, no audit writer


async def run(variant: str, rate: int, seconds: float, batch_size: int, workdir: Path) -> dict[str, Any]:
    """One measurement: `seconds` of `rate` records/s into a writer with `variant` isolation."""
    writer = None
    if variant != "none":
        settings = AuditSettings(
            dsn=f"chdb://{workdir}/chdb-{variant}",
            spool_dir=str(workdir / f"spool-{variant}"),
            isolation=variant,
            batch_size=batch_size,
        )
        writer = AuditWriter(settings)
        await writer.start()
    submit: Callable[[Any], None] = writer.submit if writer else [].append
    records = [dataclasses.replace(make_record(i), request_id=f"{variant}-{i}") for i in range(rate)]
    gc.collect()
    gc.freeze()  # as `llm-gateway serve` does after startup
    gaps: list[float] = []
    process_cpu, main_cpu, child_cpu = time.process_time(), time.thread_time(), _child_cpu(writer)
    stop = time.perf_counter() + seconds

    async def feed() -> None:
        i = 0
        while time.perf_counter() < stop:
            submit(records[i % rate])
            i += 1
            await asyncio.sleep(1 / rate)

    async def probe() -> None:
        last = time.perf_counter()
        while last < stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    await asyncio.gather(feed(), probe())
    main_cpu = time.thread_time() - main_cpu  # the probe and feed (this thread)
    if writer is not None:
        await writer.flush()  # the last batch's work belongs to this window too
    # Everything but the main thread: the store and spool threads, chDB's own threads.
    audit_cpu_here = time.process_time() - process_cpu - main_cpu
    child_cpu = _child_cpu(writer) - child_cpu
    written = writer.stats.written if writer else 0
    if writer is not None:
        await writer.close()
    gc.unfreeze()
    gaps.sort()
    per_record = 1e6 / written if written else 0.0  # the baseline writes nothing
    return {
        "variant": variant,
        "records_written": written,
        "probe_turns": len(gaps),
        "gap_p50_us": round(statistics.median(gaps) * 1e6, 1),
        "gap_p999_ms": round(gaps[int(len(gaps) * 0.999)] * 1e3, 3),
        "gap_max_ms": round(gaps[-1] * 1e3, 2),
        "gaps_over_1ms_per_s": round(sum(1 for g in gaps if g > 0.001) / seconds, 1),
        "stalled_ms_per_s": round(sum(g for g in gaps if g > 0.001) * 1e3 / seconds, 1),  # in those gaps
        "audit_cpu_gateway_process_us_per_record": round(audit_cpu_here * per_record, 1),
        "audit_cpu_child_us_per_record": round(child_cpu * per_record, 1),
    }


def _child_cpu(writer: AuditWriter | None) -> float:
    store = writer._store if writer is not None else None
    if isinstance(store, ProcessStore) and store.pid is not None:
        return cpu_times(store.pid).total_s
    return 0.0


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the median of each measure over the rounds, and its range."""
    rows = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        row: dict[str, Any] = {"variant": variant, "rounds": len(mine)}
        for key in mine[0]:
            if key != "variant":
                values = [r[key] for r in mine]
                row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        m = row[key]
        return f"{m['median']:g} ({m['min']:g} to {m['max']:g})"

    out = [
        "| audit store | max gap ms | p99.9 gap ms | gaps > 1 ms per s | ms per s in them "
        "| audit CPU µs/record: gateway process | in the child |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"none": "none (baseline)", "thread": "thread", "process": "process"}
    for row in rows:
        variant = row["variant"]
        gateway_cpu = "—" if variant == "none" else cell(row, "audit_cpu_gateway_process_us_per_record")
        child_cpu = "—" if variant != "process" else cell(row, "audit_cpu_child_us_per_record")
        out.append(
            f"| {names[variant]} | {cell(row, 'gap_max_ms')} | {cell(row, 'gap_p999_ms')} | "
            f"{cell(row, 'gaps_over_1ms_per_s')} | {cell(row, 'stalled_ms_per_s')} | "
            f"{gateway_cpu} | {child_cpu} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_stall", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500, help="records per second (default 500)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="of every variant, interleaved (default 3)")
    parser.add_argument("--batch-size", type=int, default=AuditSettings().batch_size)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit_stall.json")
    args = parser.parse_args(argv)
    sys.setswitchinterval(0.0005)  # as `llm-gateway serve` runs
    try:
        import uvloop

        uvloop.install()  # as `llm-gateway serve` runs
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass
    runs = []
    with tempfile.TemporaryDirectory(prefix="llm-gateway-audit-stall-") as tmp:
        for n in range(args.rounds):
            for variant in VARIANTS:
                workdir = Path(tmp) / f"round-{n}"
                runs.append(asyncio.run(run(variant, args.rate, args.seconds, args.batch_size, workdir)))
                print(f"[audit_stall] round {n + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    rows = summary(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rate": args.rate,
                "seconds": args.seconds,
                "batch_size": args.batch_size,
                "summary": rows,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"{args.rate} records/s, batches of up to {args.batch_size}, {args.rounds} rounds of "
        f"{args.seconds:g} s; median (range):\n"
    )
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
