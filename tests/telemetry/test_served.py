"""`llm-gateway serve` as deployed: OTLP from the environment, trace id in `audit show`, flush on SIGTERM."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e.test_cli import ServeFactory, openai_client, run_cli, serve  # noqa: F401  (fixture)
from tests.telemetry.otlp_receiver import OtlpHttpReceiver


@pytest_asyncio.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OtlpHttpReceiver]:
    rx = OtlpHttpReceiver()
    await rx.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    yield rx
    await rx.close()


async def test_served_gateway_exports_traces_and_audit_show_prints_the_trace_id(
    serve: ServeFactory,  # noqa: F811
    receiver: OtlpHttpReceiver,
) -> None:
    gw = await serve()
    raw = await openai_client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    request_id = raw.headers["x-gateway-request-id"]
    _, trace_id, span_id, _ = raw.headers["traceresponse"].split("-")
    row = await gw.audit_row(request_id)
    assert (row["trace_id"], row["span_id"]) == (trace_id, span_id)
    code, out, _ = await run_cli("audit", "show", request_id, "--config", str(gw.config_path))
    assert code == 0
    assert any(line.split() == ["trace_id", trace_id] for line in out.splitlines()), out

    async with aiohttp.ClientSession() as s:
        async with s.get(gw.base + "/metrics", headers={"Accept": "application/openmetrics-text"}) as r:
            assert r.status == 200 and "llm_gateway_requests_total" in await r.text()

    assert await gw.stop() == 0  # SIGTERM: drain, flush the audit, flush the spans
    spans = {span.name: span for _, span in receiver.received.spans()}
    assert spans["chat gpt-4o-mini"].trace_id.hex() == trace_id
    assert spans["POST /openai/{path}"].span_id.hex() == span_id
