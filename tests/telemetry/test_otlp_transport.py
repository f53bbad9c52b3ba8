"""Trace delivery: the OTEL_EXPORTER_OTLP_* settings as the SDK reads them, and HTTP retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.telemetry import otlp_encoding as otlp
from gateway.telemetry.otlp_transport import GRPC, HTTP_PROTOBUF, HttpSender, OtlpTarget
from tests.telemetry.otlp_receiver import free_port


def test_http_endpoints_follow_the_specification() -> None:
    assert OtlpTarget.for_traces({}, HTTP_PROTOBUF).endpoint == "http://localhost:4318/v1/traces"
    for base, expected in (
        ("http://c:4318", "http://c:4318/v1/traces"),
        ("http://c:4318/", "http://c:4318/v1/traces"),
        ("https://c/otlp", "https://c/otlp/v1/traces"),
    ):
        assert (
            OtlpTarget.for_traces({"OTEL_EXPORTER_OTLP_ENDPOINT": base}, HTTP_PROTOBUF).endpoint == expected
        )
    specific = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
    }
    assert OtlpTarget.for_traces(specific, HTTP_PROTOBUF).endpoint == "http://t/x"  # used as given


def test_headers_timeout_compression_and_tls_settings() -> None:
    target = OtlpTarget.for_traces(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=secret%20one,X-Tenant=acme",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2.5",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem",
        },
        HTTP_PROTOBUF,
    )
    assert dict(target.headers) == {"api-key": "secret one", "x-tenant": "acme"}
    assert (target.timeout_s, target.compression, target.certificate) == (2.5, "gzip", "/etc/ca.pem")
    fallback = OtlpTarget.for_traces(
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, HTTP_PROTOBUF
    )
    assert (fallback.timeout_s, fallback.compression) == (10.0, "none")


@pytest.mark.parametrize(
    ("env", "insecure"),
    [
        ({}, True),  # http://localhost:4317
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}, True),
    ],
)
def test_grpc_channel_security(env: dict[str, str], insecure: bool) -> None:
    assert OtlpTarget.for_traces(env, GRPC).insecure is insecure


@dataclass
class Collector:
    """An OTLP/HTTP endpoint answering with the statuses it is given, then 200."""

    port: int
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes Content-Encoding: gzip
        self.requests.append((dict(request.headers), ExportTraceServiceRequest.FromString(body)))
        status = self.statuses.pop(0) if self.statuses else 200
        reply = ExportTraceServiceResponse().SerializeToString() if status == 200 else b"not now"
        return web.Response(status=status, body=reply, headers={"Retry-After": "0"} if status == 503 else {})


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[Collector]:
    rx = Collector(free_port())
    app = web.Application()
    app.router.add_post("/v1/traces", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rx.port).start()
    yield rx
    await runner.cleanup()


def payload() -> bytes:
    span = otlp.span_message([otlp.span_prefix(1, 2, "", 0), b"\x2a\x01x", otlp.span_times(1, 2)])
    return otlp.export_request(b"", [(otlp.scope("s", None, None), "", [span])])


async def test_gzip_and_configured_headers_reach_the_collector(collector: Collector) -> None:
    target = OtlpTarget(endpoint=collector.endpoint, headers=(("api-key", "k1"),), compression="gzip")
    sender = HttpSender(target)
    assert await asyncio.to_thread(sender.send, payload(), 5.0)
    assert await asyncio.to_thread(sender.send, payload(), 5.0)  # the kept-alive connection again
    sender.shutdown()
    headers, request = collector.requests[-1]
    assert headers["api-key"] == "k1" and headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip"
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "x"


async def test_retryable_statuses_are_retried_others_are_not(collector: Collector) -> None:
    sender = HttpSender(OtlpTarget(endpoint=collector.endpoint))
    collector.statuses = [503, 429]  # 503 says Retry-After: 0; 429 falls back to backoff (~1 s)
    assert await asyncio.to_thread(sender.send, payload(), 5.0)
    assert len(collector.requests) == 3
    collector.statuses = [400]
    assert not await asyncio.to_thread(sender.send, payload(), 5.0)
    assert len(collector.requests) == 4
    sender.shutdown()


async def test_an_unreachable_collector_fails_within_the_timeout() -> None:
    sender = HttpSender(OtlpTarget(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await asyncio.to_thread(sender.send, payload(), 1.5)
    assert loop.time() - started < 3
    sender.shutdown()
