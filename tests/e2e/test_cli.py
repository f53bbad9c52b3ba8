"""`llm-gateway` as a user runs it: `serve` in its own process, `audit tail/show` beside it and after it.

Also home of `ServedGateway` (a gateway subprocess on a config file), which test_spool and
test_memory use too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from tests.emulator.server import Emulator

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-SECRET123"
START_WITHIN_S = 90.0  # a cold chDB start on a busy 2-core box
STOP_WITHIN_S = 60.0
CLI_WITHIN_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(directory: Path, emulator: Emulator, **sections: dict[str, Any]) -> Path:
    """A config file serving on a free port, providers at the emulator, state and audit under directory."""
    raw: dict[str, Any] = {
        "log_level": "info",
        "server": {"host": "127.0.0.1", "port": free_port(), "state_dir": str(directory / "state")},
        "audit": {
            "dsn": f"chdb://{directory}/audit",
            "spool_dir": str(directory / "spool"),
            "flush_interval_s": 0.05,
            "replay_interval_s": 0.2,
        },
        "providers": {
            name: {"base_url": emulator.base_url(name)} for name in ("openai", "anthropic", "gemini")
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def run_cli(*args: str, within: float = CLI_WITHIN_S) -> tuple[int, str, str]:
    """`python -m gateway ARGS` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class ServedGateway:
    """`python -m gateway serve --config F` in a child process."""

    config_path: Path
    process: asyncio.subprocess.Process
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.config['server']['port']}"

    def url(self, provider: str) -> str:
        return f"{self.base}/{provider}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, within: float = START_WITHIN_S) -> None:
        """Poll /readyz until the gateway has its store and upstream sessions (or fail with its log)."""
        deadline = asyncio.get_running_loop().time() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
                try:
                    async with s.get(self.base + "/readyz") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"gateway not ready within {within}s:\n{self.log()}")
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, within: float = STOP_WITHIN_S) -> int:
        """Signal the gateway and wait for it to exit; its exit code."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            async with asyncio.timeout(within):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"gateway did not exit within {within}s:\n{self.log()}") from None

    async def audit(self, what: str) -> Any:
        """GET /_gateway/audit/WHAT with the token from the runtime file, as the CLI does; None on 404."""
        runtime = json.loads((Path(self.config["server"]["state_dir"]) / "gateway.runtime.json").read_text())
        assert runtime["pid"] == self.pid
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async with s.get(
                f"{runtime['url']}/_gateway/audit/{what}",
                headers={"Authorization": f"Bearer {runtime['token']}"},
            ) as r:
                if r.status == 404:
                    return None
                assert r.status == 200, await r.text()
                return await r.json()

    async def audit_row(self, request_id: str, within: float = 30.0) -> dict[str, Any]:
        """The audit row of one request, once the writer's batch has reached the store."""
        deadline = asyncio.get_running_loop().time() + within
        while (row := await self.audit(f"show/{request_id}")) is None:
            assert asyncio.get_running_loop().time() < deadline, f"no audit row for {request_id}"
            await asyncio.sleep(0.1)
        found: dict[str, Any] = row
        return found


ServeFactory = Callable[..., Awaitable[ServedGateway]]


@pytest_asyncio.fixture
async def serve(tmp_path: Path, emulator: Emulator) -> AsyncIterator[ServeFactory]:
    """Factory: `gw = await serve(server={...})` starts a ready gateway process; killed after the test."""
    started: list[ServedGateway] = []

    async def start(directory: Path | None = None, **sections: dict[str, Any]) -> ServedGateway:
        """`directory` (default the test's tmp_path) holds its config, audit store, spool and state."""
        directory = directory or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        config_path = write_config(directory, emulator, **sections)
        log_path = directory / f"gateway-{len(started)}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config_path),
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        gw = ServedGateway(config_path, process, log_path, yaml.safe_load(config_path.read_text()))
        started.append(gw)
        await gw.wait_ready()
        return gw

    yield start
    for gw in started:
        if gw.process.returncode is None:
            gw.process.kill()
            await gw.process.wait()


def openai_client(gw: ServedGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=KEY, max_retries=0)


async def json_lines(*args: str) -> list[dict[str, Any]]:
    code, out, err = await run_cli(*args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_audit_tail_and_show_beside_a_running_gateway_and_after_it(serve: ServeFactory) -> None:
    gw = await serve()
    client = openai_client(gw)
    request_ids = []
    for i in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}]
        )
        request_ids.append(raw.headers["x-gateway-request-id"])
    config = str(gw.config_path)

    # While it runs the gateway owns the chDB directory; the CLI asks it over the runtime endpoint.
    # Rows are batched (flush_interval_s), so give them a moment to land.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        rows = await json_lines("audit", "tail", "--json", "--config", config)
        if [r["request_id"] for r in rows][-3:] == request_ids:
            break
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.2)
    assert len(rows) == 3
    assert all(r["outcome"] == "ok" and r["provider"] == "openai" for r in rows)
    assert KEY not in json.dumps(rows)

    (shown,) = await json_lines("audit", "show", request_ids[1], "--json", "--config", config)
    assert shown["request_id"] == request_ids[1]
    assert "trace_id" in shown and shown["status"] == 200 and shown["requested_model"] == "gpt-4o-mini"
    assert "question 1" in shown["request_preview"]
    code, out, _ = await run_cli("audit", "show", request_ids[1], "--config", config)
    assert code == 0 and request_ids[1] in out and "trace_id" in out

    code, out, err = await run_cli("audit", "show", "0" * 32, "--config", config)
    assert code == 1 and "no exchange" in err

    code, out, _ = await run_cli("audit", "tail", "-n", "2", "--config", config)
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ts", "request_id", "provider"]
    assert request_ids[2] in out and request_ids[1] in out and request_ids[0] not in out

    assert await gw.stop() == 0
    assert not (Path(gw.config["server"]["state_dir"]) / "gateway.runtime.json").exists()

    # Stopped: the CLI opens the store itself.
    rows = await json_lines("audit", "tail", "--json", "--config", config)
    assert [r["request_id"] for r in rows] == request_ids
    (shown,) = await json_lines("audit", "show", request_ids[0], "--json", "--config", config)
    assert shown["request_id"] == request_ids[0] and "trace_id" in shown


async def test_audit_tail_after_a_crash_reads_the_store_despite_the_stale_runtime_file(
    serve: ServeFactory,
) -> None:
    gw = await serve()
    raw = await openai_client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    request_id = raw.headers["x-gateway-request-id"]
    await gw.audit_row(request_id)  # in the store, not only in the writer's queue
    assert await gw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (Path(gw.config["server"]["state_dir"]) / "gateway.runtime.json").exists()
    rows = await json_lines("audit", "tail", "--json", "--config", str(gw.config_path))
    assert [r["request_id"] for r in rows] == [request_id]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("server:\n  prot: 9000\n", "server.prot: unknown key (did you mean 'port'?)"),
        ("audit:\n  dsn: mysql://x\n", "audit.dsn must start with chdb://"),
        ("server: {port: [\n", "not valid YAML"),
    ],
)
async def test_bad_config_exits_2_with_a_message_saying_what_to_fix(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, out, err = await run_cli("serve", "--config", str(path))
    assert code == 2, (code, out, err)
    assert err.startswith("llm-gateway: config error:") and message in err, err
    assert "Traceback" not in err


async def test_audit_commands_check_the_config_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  openai:\n    base_url: ftp://x\n")
    code, _, err = await run_cli("audit", "tail", "--config", str(path))
    assert code == 2 and "providers.openai.base_url" in err and "Traceback" not in err


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    code, _, err = await run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read config file" in err and "nope.yaml" in err


async def test_help() -> None:
    code, out, _ = await run_cli("serve", "--help")
    assert code == 0 and "--config" in out and "--port" in out
    code, out, _ = await run_cli("--help")
    assert code == 0 and "serve" in out and "audit" in out
    code, _, err = await run_cli("frobnicate")
    assert code == 2 and "invalid choice" in err
