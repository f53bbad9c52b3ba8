"""Every query in dashboards/*.json returns data: PromQL through a real Prometheus scraping a running
gateway, ClickHouse SQL against the chDB audit store, both filled by real SDK traffic."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.conftest import RunningGateway
from tests.e2e.test_failures import gemini_client

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
DATASOURCE_UIDS = {"prometheus", "jaeger", "clickhouse"}
KEY = "sk-test-openai-PROVIDERKEY123"
AWS_KEY = "AKIA" + "Q3VZ7XKJ2MNP4RST"
# Grafana's built-in variables, as a dashboard would expand them over the last few minutes.
PROM_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "10m"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # rows


def queries(kind: str) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query) for every target of datasource type `kind`."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", ()):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid == kind:
                    found.append(
                        (path.name, panel["title"], target["expr" if kind == "prometheus" else "rawSql"])
                    )
    return found


def test_dashboards_are_well_formed() -> None:
    assert {p.name for p in DASHBOARDS} == {
        "gateway-overview.json",
        "usage-cost.json",
        "security.json",
        "audit-explorer.json",
    }
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), path.name
        for panel in panels(dashboard):
            sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", ())]
            for source in filter(None, sources):
                assert source["uid"] in DATASOURCE_UIDS, (path.name, panel["title"], source)
    assert len(queries("prometheus")) >= 20 and len(queries("clickhouse")) >= 6


# -- traffic ------------------------------------------------------------------------------------


async def drive_traffic(gw: RunningGateway) -> None:
    """Every kind of exchange the dashboards look at: three SDKs, streams, failures, a finding."""
    oa = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    await oa.chat.completions.create(model="gpt-4o-mini", messages=messages)
    async for _ in await oa.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
        pass
    await oa.responses.create(model="gpt-4.1-mini", input="hi")
    await oa.embeddings.create(model="text-embedding-3-small", input="hi")
    await oa.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"my key is {AWS_KEY}"}]
    )
    an = anthropic.AsyncAnthropic(base_url=gw.url("anthropic"), api_key=KEY, max_retries=0)
    await an.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=messages)
    async with an.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=messages) as stream:
        await stream.get_final_message()
    gm = gemini_client(gw.url("gemini"))
    await gm.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    async for _ in await gm.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
        pass
    failing = openai.AsyncOpenAI(
        base_url=gw.url("openai") + "/v1",
        api_key=KEY,
        max_retries=0,
        default_headers={"x-emulator-scenario": "error:500"},
    )
    with pytest.raises(openai.InternalServerError):
        await failing.chat.completions.create(model="gpt-4o-mini", messages=messages)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url("openai") + "/v1/chat/completions", data=b"{oops") as r:
            assert r.status == 400


# -- ClickHouse ---------------------------------------------------------------------------------


def expand_clickhouse(sql: str) -> str:
    """The grafana-clickhouse-datasource macros and this dashboard's variables, over the last day."""
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        r"\1 >= now() - INTERVAL 1 DAY AND \1 <= now() + INTERVAL 1 MINUTE",
        sql,
    )
    sql = sql.replace("$__fromTime", "(now() - INTERVAL 1 DAY)").replace("$__toTime", "now()")
    sql = sql.replace("$__interval_s", "60").replace("$provider", "%")
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql


async def test_every_clickhouse_query_returns_rows(make_gateway: Any) -> None:
    gw: RunningGateway = await make_gateway()
    await drive_traffic(gw)
    await gw.writer.flush()
    failures = []
    for dashboard, title, sql in queries("clickhouse"):
        try:
            rows = await gw.writer.query(expand_clickhouse(sql), {})
        except Exception as exc:  # report every broken panel, not just the first
            failures.append(f"{dashboard} / {title}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if not rows:
            failures.append(f"{dashboard} / {title}: no rows")
    assert not failures, "\n".join(failures)


# -- Prometheus ---------------------------------------------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else ""
    )
    if not found:
        if os.geteuid() == 0:
            pytest.fail("prometheus is not installed: `make system-deps` (apt-get install -y prometheus)")
        pytest.skip("prometheus is not installed and we are not root to install it")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """The Debian prometheus binary scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: llm-gateway\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    async def wait_ready(self, session: aiohttp.ClientSession, within: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                async with session.get(self.api + "/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert self.process.poll() is None, "prometheus exited; see its log"
            assert asyncio.get_running_loop().time() < deadline, "prometheus not ready"
            await asyncio.sleep(0.2)

    async def query(self, session: aiohttp.ClientSession, expr: str) -> dict[str, Any]:
        async with session.get(self.api + "/api/v1/query", params={"query": expr}) as r:
            data: dict[str, Any] = await r.json()
            return data

    async def scrapes(self, session: aiohttp.ClientSession) -> int:
        data = await self.query(session, 'count_over_time(up{job="llm-gateway"}[5m])')
        result = data["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    async def wait_for_scrapes(self, session: aiohttp.ClientSession, count: int, within: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while await self.scrapes(session) < count:
            assert asyncio.get_running_loop().time() < deadline, "prometheus is not scraping the gateway"
            await asyncio.sleep(0.3)


def expand_promql(expr: str) -> str:
    for name, value in PROM_BUILTINS.items():
        expr = expr.replace(name, value)
    expr = re.sub(r"\$\w+", ".*", expr)  # template variables: "All"
    return expr


def has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


async def test_every_promql_query_returns_data_from_a_real_prometheus(
    make_gateway: Any, tmp_path: Path
) -> None:
    gw: RunningGateway = await make_gateway(telemetry={"identity_labels": True})
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{gw.server.port}")
    try:
        async with aiohttp.ClientSession() as session:
            await prometheus.wait_ready(session)
            # Scraping starts a few seconds after readiness. Traffic comes in two rounds, each after
            # a few scrapes, so every counter and bucket has risen between two samples.
            for round_ in (1, 2):
                await prometheus.wait_for_scrapes(session, 3 * round_)
                await drive_traffic(gw)
            await gw.writer.flush()
            await prometheus.wait_for_scrapes(session, 9)
            failures = []
            for dashboard, title, expr in queries("prometheus"):
                data = await prometheus.query(session, expand_promql(expr))
                if data.get("status") != "success":
                    failures.append(f"{dashboard} / {title}: {data.get('error')} in {expr}")
                elif not has_a_number(data["data"]["result"]):
                    failures.append(f"{dashboard} / {title}: no data for {expand_promql(expr)}")
    finally:
        prometheus.stop()
    assert not failures, "\n".join(failures)
