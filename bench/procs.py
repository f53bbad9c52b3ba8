"""Child processes of a bench run: start, wait until they listen, stop; CPU time and peak RSS from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A bench run cannot go on; the message says why and what to do."""


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """One started server process (its own session, so a terminal Ctrl-C reaches only us)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_listening(self, port: int, timeout_s: float = 60.0) -> None:
        """Block until the child accepts TCP connections on `port`, or fail with its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} did not listen on port {port} within {timeout_s:g}s:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace_s` (or at once on a second Ctrl-C)."""
        if self.popen.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.popen.wait()
        except BaseException:
            self._signal_group(signal.SIGKILL)
            self.popen.wait()
            raise

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def start(
    name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Child:
    log = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own copy
    return Child(name, popen, log_path)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a server may fork helpers; their CPU counts too)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds (user + system, all threads) of a process and of the processes below it."""

    own_s: float
    children_s: float  # the gateway's audit store child, for instance

    @property
    def total_s(self) -> float:
        return self.own_s + self.children_s

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own_s - earlier.own_s, self.children_s - earlier.children_s)


def cpu_times(pid: int) -> CpuTimes:
    """CPU time of `pid`, and of its live descendants, so far.

    A descendant that exited during a measurement takes its CPU time with it (a replaced audit
    store child, say): the children's share is then understated.
    """
    own, children = 0, 0
    for proc in descendants(pid):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
        if proc == pid:
            own += ticks
        else:
            children += ticks
    return CpuTimes(own / CLOCK_TICKS, children / CLOCK_TICKS)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its descendants (all threads included), in seconds."""
    return cpu_times(pid).total_s


def children_peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM over the processes below `pid` (the audit store child), in MiB."""
    total = 0.0
    for child in descendants(pid):
        if child != pid:
            with contextlib.suppress(OSError):  # exited since descendants() listed it
                total += peak_rss_mb(child)
    return total


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")
