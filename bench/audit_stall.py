"""`python -m bench.audit_stall`: how long the audit store stalls the gateway's event loop.

An AuditWriter on a real chDB store takes N records per second (the request path's `submit`),
while a probe on the same event loop wakes every millisecond and records how late it woke. The
lateness is what a request on that loop waits. Compared for `audit.isolation: thread` (store on a
thread of this process) and `process` (store in a child process).
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
from pathlib import Path
from typing import Any

from gateway.audit.settings import AuditSettings
from gateway.audit.writer import AuditWriter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.audit.support import make_record  # noqa: E402  (a realistic record with every field)


async def run(isolation: str, rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    sys.setswitchinterval(0.0005)  # as `llm-gateway serve` runs
    settings = AuditSettings(
        dsn=f"chdb://{workdir}/chdb-{isolation}",
        spool_dir=str(workdir / f"spool-{isolation}"),
        isolation=isolation,
    )
    writer = AuditWriter(settings)
    await writer.start()
    gc.collect()
    gc.freeze()  # as `llm-gateway serve` does after startup
    records = [dataclasses.replace(make_record(i), request_id=f"{isolation}-{i}") for i in range(rate)]
    late: list[float] = []
    stop = time.perf_counter() + seconds

    async def feed() -> None:
        i = 0
        while time.perf_counter() < stop:
            writer.submit(records[i % rate])
            i += 1
            await asyncio.sleep(1 / rate)

    async def probe() -> None:
        while time.perf_counter() < stop:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(time.perf_counter() - before - 0.001)

    await asyncio.gather(feed(), probe())
    await writer.close()
    late.sort()
    return {
        "isolation": isolation,
        "records_written": writer.stats.written,
        "probe_wakeups": len(late),
        "late_p50_ms": round(statistics.median(late) * 1e3, 3),
        "late_p99_ms": round(late[int(len(late) * 0.99)] * 1e3, 3),
        "late_p999_ms": round(late[int(len(late) * 0.999)] * 1e3, 3),
        "late_max_ms": round(late[-1] * 1e3, 2),
        "late_over_1ms_per_s": round(sum(1 for v in late if v > 0.001) / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_stall", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500, help="records per second (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit_stall.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llm-gateway-audit-stall-") as tmp:
        results = [asyncio.run(run(iso, args.rate, args.seconds, Path(tmp))) for iso in ("thread", "process")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rate": args.rate, "seconds": args.seconds, "runs": results}, indent=2) + "\n"
    )
    print(
        "| isolation | loop lateness p50 / p99 / p99.9 / max ms | wakeups > 1 ms late per s |\n|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['isolation']} | {r['late_p50_ms']} / {r['late_p99_ms']} / {r['late_p999_ms']} / "
            f"{r['late_max_ms']} | {r['late_over_1ms_per_s']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
