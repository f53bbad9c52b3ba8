"""No audit record is lost: spooled while the sink fails, across a restart, and through a SIGTERM drain."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
from google import genai
from google.genai import types

from gateway.audit.settings import AuditSettings
from gateway.audit.spool import SUFFIX, decode_batch
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter
from gateway.config import load_config
from tests.audit.support import Faults, FaultyStore
from tests.conftest import RunningGateway, gateway_config
from tests.e2e.test_cli import ServeFactory, serve  # noqa: F401 (the fixture)
from tests.emulator.server import Emulator

KEY = "sk-test-SECRET123"
N = 30
MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def sdk_request(gw: RunningGateway, i: int) -> str:
    """Request i with the official SDK, round-robin over the three providers; its gateway request id."""
    provider = ("openai", "anthropic", "gemini")[i % 3]
    if provider == "openai":
        oai = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=KEY, max_retries=0)
        raw = await oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        return raw.headers["x-gateway-request-id"]
    if provider == "anthropic":
        ant = anthropic.AsyncAnthropic(base_url=gw.url("anthropic"), api_key=KEY, max_retries=0)
        araw = await ant.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES
        )
        return araw.headers["x-gateway-request-id"]
    gem = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=gw.url("gemini")))
    resp = await gem.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert resp.sdk_http_response is not None and resp.sdk_http_response.headers is not None
    return resp.sdk_http_response.headers["x-gateway-request-id"]


def spooled(settings: AuditSettings) -> list[dict[str, Any]]:
    """The rows in the spool directory, oldest batch first (read straight from the files)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(settings.spool_dir).glob(f"*{SUFFIX}")):
        data = path.read_bytes()
        assert KEY.encode() not in data
        rows.extend(decode_batch(data)[1])
    return rows


def faulty_writer(settings: AuditSettings, faults: Faults) -> AuditWriter:
    return AuditWriter(settings, store_factory=lambda s: FaultyStore(s, faults))


async def test_records_spool_while_the_sink_fails_and_land_in_order_when_it_recovers(
    make_gateway: Callable[..., Any], tmp_path: Path, emulator: Emulator
) -> None:
    faults = Faults(fail_inserts=True)
    settings = gateway_config(tmp_path, emulator).audit
    writer = faulty_writer(settings, faults)
    gw: RunningGateway = await make_gateway(writer=writer)

    request_ids = [await sdk_request(gw, i) for i in range(N)]

    assert await gw.rows() == []  # flushed: every insert failed, so the batches went to the spool
    stats = writer.stats
    assert (stats.written, stats.spooled, stats.spool_backlog, stats.dropped) == (0, N, N, 0)
    assert "injected" in stats.last_error
    assert [r["request_id"] for r in spooled(settings)] == request_ids
    assert faults.inserts == []

    faults.fail_inserts = False
    rows = await gw.rows()  # a forced cycle replays the spool
    assert [r["request_id"] for r in rows] == request_ids
    assert all(r["outcome"] == "ok" and r["status"] == 200 for r in rows)
    assert [r["provider"] for r in rows] == [("openai", "anthropic", "gemini")[i % 3] for i in range(N)]
    assert KEY not in json.dumps(rows, default=str)
    assert sum(faults.inserts) == N
    assert writer.stats.spool_backlog == 0 and writer.stats.replayed == N
    assert spooled(settings) == []
    assert (await gw.rows()) == rows  # replay is not repeated


async def test_records_queued_at_shutdown_are_spooled_and_replayed_by_the_next_gateway(
    make_gateway: Callable[..., Any], tmp_path: Path, emulator: Emulator
) -> None:
    # The sink is unreachable from the start; a long flush interval keeps every record queued in
    # memory until close(), which must spool them all.
    faults = Faults(fail_open=True)
    slow_flush = {"flush_interval_s": 60.0, "replay_interval_s": 60.0}
    settings = gateway_config(tmp_path, emulator, audit=slow_flush).audit
    first: RunningGateway = await make_gateway(writer=faulty_writer(settings, faults), audit=slow_flush)

    request_ids = [await sdk_request(first, i) for i in range(N)]
    async with aiohttp.ClientSession() as s:
        async with s.get(str(first.server.make_url("/readyz"))) as r:
            assert r.status == 503  # not ready without its store …
            assert "injected" in (await r.json())["audit"]["last_error"]
    assert spooled(settings) == []  # … and nothing cut yet: all N are in memory
    assert first.writer.stats.queued == N

    await first.server.close()  # graceful stop: the writer spools what it holds
    assert first.writer.stats.dropped == 0
    assert [r["request_id"] for r in spooled(settings)] == request_ids

    second: RunningGateway = await make_gateway()  # healthy store, same spool directory
    rows = await second.rows()
    assert [r["request_id"] for r in rows] == request_ids
    assert second.writer.stats.replayed == N and second.writer.stats.spool_backlog == 0
    assert spooled(settings) == []


async def test_sigterm_drains_an_in_flight_stream_and_its_record(serve: ServeFactory) -> None:  # noqa: F811
    gw = await serve()
    body = {"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {KEY}", "x-emulator-scenario": "delay:100"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async with s.post(gw.url("openai") + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            request_id = r.headers["x-gateway-request-id"]
            before = await r.content.readany()
            gw.process.send_signal(signal.SIGTERM)
            after = b"".join([chunk async for chunk in r.content.iter_any()])
    assert before and after, "the stream went on after SIGTERM"
    stream = before + after
    assert stream.endswith(b"data: [DONE]\n\n")
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in stream.decode().splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(deltas) == "Hello from the emulator."

    assert await gw.stop() == 0  # already signalled: waits for the exit
    assert "draining in-flight requests" in gw.log()

    settings = load_config(gw.config_path).audit
    store = AuditStore(settings)
    store.open()
    try:
        rows = store.query(f"SELECT * FROM {settings.qualified_table}")
    finally:
        store.close()
    assert len(rows) == 1
    (row,) = rows
    assert row["request_id"] == request_id and row["outcome"] == "ok" and row["status"] == 200
    assert row["stream"] is True and row["response_bytes"] == len(stream)
    assert row["output_tokens"] and row["finish_reason"] == "stop"
    assert spooled(settings) == []
