"""Profile the gateway under load with py-spy and summarise the hottest functions."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.gateway_proc import REPO
from bench.procs import BenchError


def locate_py_spy() -> str:
    venv = REPO / ".venv" / "bin" / "py-spy"
    found = str(venv) if venv.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("--profile needs py-spy: `.venv/bin/pip install py-spy`")
    return found


def start_recording(binary: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy samples `pid` for `seconds` into a speedscope file.

    `--gil`: only the thread holding the GIL is sampled, so the shares are shares of the Python
    CPU time that serialises the event loop (idle waits of the writer threads drop out).
    """
    duration = str(max(1, round(seconds)))
    argv = [binary, "record", "-p", str(pid), "-d", duration, "-r", "200", "--gil", "--format", "speedscope"]
    return subprocess.Popen([*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def hotspots(speedscope: Path, top: int = 15) -> dict[str, list[dict[str, Any]]]:
    """Functions by share of samples: `self` (leaf frame), and `gateway` (inclusive, gateway/ code only)."""
    data = json.loads(speedscope.read_text())
    # py-spy makes one frame per (function, line); a hotspot is a function, so merge its lines.
    keys = [(frame["name"], _short(frame.get("file", ""))) for frame in data["shared"]["frames"]]
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    total = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            total += weight
            own[keys[stack[-1]]] += weight
            for key in {keys[i] for i in stack}:
                inclusive[key] += weight
    if not total:
        raise BenchError(f"{speedscope}: no samples")
    ours = Counter({key: n for key, n in inclusive.items() if key[1].startswith("gateway/")})

    def listing(counts: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"function": name, "file": file, "percent": round(100 * n / total, 1)}
            for (name, file), n in counts.most_common(top)
        ]

    return {"self": listing(own), "gateway": listing(ours), "samples": [{"total": total}]}


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.removeprefix(str(REPO) + "/")


def markdown(spots: dict[str, list[dict[str, Any]]]) -> str:
    """Two side-by-side lists: hottest leaf functions, and gateway functions by inclusive share."""
    out = [
        "**py-spy hotspots (`--gil`: shares of the samples where a thread held the GIL)**",
        "",
        "| self % | function (any code) | file | | incl. % | gateway function | file |",
        "|---:|---|---|---|---:|---|---|",
    ]
    for a, b in zip(spots["self"], spots["gateway"], strict=False):
        out.append(
            f"| {a['percent']} | `{a['function']}` | {a['file']} | | "
            f"{b['percent']} | `{b['function']}` | {b['file']} |"
        )
    return "\n".join(out)
