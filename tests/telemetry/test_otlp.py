"""OTLP push from the standard OTEL_* variables to a local endpoint that decodes the protobufs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from gateway.config import load_config
from gateway.telemetry import genai
from gateway.telemetry.settings import TelemetrySettings
from gateway.telemetry.setup import build_telemetry, otlp_wanted
from tests.conftest import RunningGateway
from tests.telemetry.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, attributes

KEY = "sk-test-openai-PROVIDERKEY123"


@pytest_asyncio.fixture(params=["http/protobuf", "grpc"])
async def receiver(request: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    rx = OtlpHttpReceiver() if request.param == "http/protobuf" else OtlpGrpcReceiver()
    await rx.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", request.param)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team.owner=platform")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")  # only the final push on shutdown
    yield rx
    await rx.close()


async def test_spans_and_metrics_arrive_over_otlp(make_gateway: Any, receiver: Any) -> None:
    gw: RunningGateway = await make_gateway()  # the real build_telemetry, reading os.environ
    client = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=KEY, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    trace_id = raw.headers["traceresponse"].split("-")[1]
    await gw.server.close()  # shutdown flushes the span queue and pushes the metrics once more

    spans = receiver.received.spans()
    assert spans, "no spans arrived"
    resource = spans[0][0]
    assert resource["service.name"] == "gateway-under-test"
    assert resource["deployment.environment.name"] == "ci" and resource["team.owner"] == "platform"
    by_name = {span.name: span for _, span in spans}
    assert set(by_name) >= {"POST /openai/{path}", "chat gpt-4o-mini", "POST"}
    model = by_name["chat gpt-4o-mini"]
    assert model.trace_id.hex() == trace_id
    a = attributes(model.attributes)
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.request.max_tokens"] == 20
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert KEY not in str(receiver.received.traces)

    usage = receiver.received.metric(genai.METRIC_TOKEN_USAGE)
    assert usage, "no gen_ai.client.token.usage arrived"
    _, metric = usage[-1]
    assert metric.unit == "{token}"
    points = metric.histogram.data_points
    assert {attributes(p.attributes)["gen_ai.token.type"] for p in points} == {"input", "output"}
    assert tuple(points[0].explicit_bounds) == tuple(float(b) for b in genai.TOKEN_BUCKETS)
    assert receiver.received.metric("llm_gateway.requests")


def test_otlp_is_on_when_an_endpoint_is_set_and_off_when_told() -> None:
    auto = TelemetrySettings()
    assert not otlp_wanted(auto, {}, "traces")
    assert otlp_wanted(auto, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "traces")
    assert otlp_wanted(auto, {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318"}, "metrics")
    assert not otlp_wanted(auto, {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318"}, "traces")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"}
    assert otlp_wanted(auto, env, "traces") and not otlp_wanted(auto, env, "metrics")
    assert otlp_wanted(TelemetrySettings(otlp="on"), {}, "traces")
    assert not otlp_wanted(TelemetrySettings(otlp="off"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, "traces")


async def test_otel_sdk_disabled_turns_everything_off(
    make_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    telemetry = build_telemetry(load_config(None))
    assert telemetry.tracer_provider is None and telemetry.meter_provider is None
    gw: RunningGateway = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.get(str(gw.server.make_url("/metrics"))) as r:
            assert r.status == 404
