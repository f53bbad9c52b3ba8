"""Memory stays bounded whatever the response size: a 200 MB stream through a gateway process."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_cli import ServeFactory, serve  # noqa: F401 (the fixture)

KEY = "sk-test-SECRET123"
STREAM_BYTES = 210_000_000
MAX_PEAK_GROWTH = 50 * 1024 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS of a process, in KiB, from /proc/PID/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


async def stream_through(url: str, scenario: str, stream_options: bool = True) -> tuple[str, int, bytes]:
    """A chat stream read and discarded chunk by chunk: (gateway request id, bytes received, tail)."""
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "write a lot"}],
    }
    if stream_options:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {KEY}", "x-emulator-scenario": scenario}
    received = 0
    tail = b""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600, sock_read=60)) as s:
        async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            request_id = r.headers["x-gateway-request-id"]
            async for chunk in r.content.iter_any():
                received += len(chunk)
                tail = (tail + chunk)[-256:]
    return request_id, received, tail


@pytest.mark.slow
async def test_a_200_mb_stream_does_not_grow_the_gateway_by_its_size(serve: ServeFactory) -> None:  # noqa: F811
    gw = await serve()
    # Warm up: first-request allocations (sessions, parsers, audit batch) are not what we measure.
    for _ in range(3):
        await stream_through(gw.url("openai"), "large-stream:2000000")
    before = memory_kib(gw.pid)

    request_id, received, tail = await stream_through(gw.url("openai"), f"large-stream:{STREAM_BYTES}")

    after = memory_kib(gw.pid)
    assert received >= 200_000_000
    assert tail.endswith(b"data: [DONE]\n\n")
    growth = (after["VmHWM"] - before["VmHWM"]) * 1024
    assert growth < MAX_PEAK_GROWTH, (
        f"peak RSS grew by {growth / 2**20:.1f} MiB for a {received / 2**20:.0f} MiB stream"
    )

    row = await gw.audit_row(request_id)
    assert row["outcome"] == "ok" and row["status"] == 200 and row["stream"] is True
    assert row["response_bytes"] == received >= 200_000_000
    assert row["input_tokens"] and row["output_tokens"] and row["output_tokens"] >= STREAM_BYTES // 4
    assert row["finish_reason"] == "stop"
    assert len(row["response_preview"]) <= 4096
