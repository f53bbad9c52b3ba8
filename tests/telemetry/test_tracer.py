"""The gateway's implementation of the OpenTelemetry trace API, read back from what it exports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.telemetry.sampling import sampler_from_env
from gateway.telemetry.setup import build_tracer_provider
from gateway.telemetry.tracer import GatewayTracerProvider
from tests.telemetry.otlp_decoded import DecodedSpan, DecodingSender

REMOTE_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
REMOTE_SPAN = 0x00F067AA0BA902B7

Build = Callable[..., tuple[GatewayTracerProvider, DecodingSender]]


@pytest.fixture
def build() -> Iterator[Build]:
    """`build(**env)`: a provider configured from `env`, exporting into a decoder."""
    made: list[GatewayTracerProvider] = []

    def make(**env: str) -> tuple[GatewayTracerProvider, DecodingSender]:
        sender = DecodingSender()
        provider = build_tracer_provider(Resource.create({"service.name": "under-test"}), sender, env)
        made.append(provider)
        return provider, sender

    yield make
    for provider in made:
        provider.shutdown()


def exported(provider: GatewayTracerProvider, sender: DecodingSender) -> list[DecodedSpan]:
    assert provider.force_flush(5_000)
    return sender.spans()


def remote_parent(sampled: bool, state: str = "") -> context_api.Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    ctx = SpanContext(
        REMOTE_TRACE, REMOTE_SPAN, True, flags, TraceState.from_header([state]) if state else None
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx))


def test_parent_child_links_kinds_scopes_and_resource(build: Build) -> None:
    provider, sender = build()
    tracer = provider.get_tracer("llm_gateway", "1.2.3")
    library = provider.get_tracer(
        "opentelemetry.instrumentation.aiohttp_client", "0.1b0", "https://schema/1.11"
    )
    assert provider.get_tracer("llm_gateway", "1.2.3") is tracer
    server = tracer.start_span("POST /x", remote_parent(True, "vendor=abc"), SpanKind.SERVER, {"a": 1})
    with trace.use_span(server):
        client = library.start_span("POST", kind=SpanKind.CLIENT)  # parent: the current span
        client.end()
    server.end()

    by_name = {s.name: s for s in exported(provider, sender)}
    s, c = by_name["POST /x"], by_name["POST"]
    assert s.trace_id == c.trace_id == REMOTE_TRACE
    assert s.parent_span_id == REMOTE_SPAN and c.parent_span_id == s.span_id
    assert (s.kind, c.kind) == (SpanKind.SERVER, SpanKind.CLIENT)
    assert s.trace_state == c.trace_state == "vendor=abc"
    assert (s.scope, s.scope_version) == ("llm_gateway", "1.2.3")
    assert (c.scope, c.scope_version, c.schema_url) == (
        "opentelemetry.instrumentation.aiohttp_client",
        "0.1b0",
        "https://schema/1.11",
    )
    assert s.resource["service.name"] == "under-test" and s.attributes == {"a": 1}
    assert s.flags == 0x301 and c.flags == 0x101  # sampled; parent remote / local
    assert s.start_time <= c.start_time <= c.end_time <= s.end_time


def test_a_root_span_starts_a_new_trace_and_propagates_it(build: Build) -> None:
    provider, sender = build()
    span = provider.get_tracer("t").start_span("root")
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    span.end()
    (root,) = exported(provider, sender)
    assert root.parent_span_id is None and root.flags == 0x01
    assert carrier["traceparent"] == f"00-{root.trace_id:032x}-{root.span_id:016x}-01"


def test_attribute_rules_limits_and_truncation(build: Build) -> None:
    provider, sender = build(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="3", OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT="4")
    span = provider.get_tracer("t").start_span("s", attributes={"a": "abcdefgh", "b": ["long-one", "x"]})
    span.set_attribute("none", None)  # type: ignore[arg-type]  # not allowed: dropped, not counted
    span.set_attribute("mixed", ("a", 1))  # type: ignore[arg-type]  # not homogeneous: dropped
    span.set_attributes({"c": 3, "d": 4.5, "e": True})  # only one more fits
    span.set_attribute("a", "new")  # an existing key may change
    span.end()
    span.set_attribute("late", 1)  # after the end: ignored
    (s,) = exported(provider, sender)
    assert s.attributes == {"a": "new", "b": ("long", "x"), "c": 3}
    assert s.dropped_attributes == 2


def test_events_links_and_their_limits(build: Build) -> None:
    provider, sender = build(OTEL_SPAN_EVENT_COUNT_LIMIT="2", OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT="1")
    linked = SpanContext(REMOTE_TRACE, 9, True, TraceFlags(1))
    span = provider.get_tracer("t").start_span("s", links=[Link(linked, {"why": "retry"})])
    span.add_event("one", {"x": 1, "y": 2}, timestamp=123)
    span.add_event("two")
    span.add_event("three")
    span.end()
    (s,) = exported(provider, sender)
    assert [(e.name, e.attributes, e.dropped_attributes) for e in s.events] == [
        ("one", {"x": 1}, 1),
        ("two", {}, 0),
    ]
    assert s.events[0].timestamp == 123 and s.dropped_events == 1
    (link,) = s.links
    assert int.from_bytes(link.span_id, "big") == 9 and link.flags == 0x301


def test_status_rules_and_exceptions(build: Build) -> None:
    provider, sender = build()
    tracer = provider.get_tracer("t")
    failed = tracer.start_span("failed")
    failed.set_status(StatusCode.UNSET)  # changes nothing
    failed.set_status(Status(StatusCode.ERROR, "boom"))
    failed.end()
    ok = tracer.start_span("ok")
    ok.set_status(StatusCode.OK, "ignored for OK")
    ok.set_status(StatusCode.ERROR, "OK is final")
    ok.end()
    with pytest.raises(ValueError), tracer.start_as_current_span("raised") as current:
        assert trace.get_current_span() is current
        raise ValueError("bad input")
    assert trace.get_current_span() is trace.INVALID_SPAN

    by_name = {s.name: s for s in exported(provider, sender)}
    assert (by_name["failed"].status_code, by_name["failed"].status_message) == (StatusCode.ERROR, "boom")
    assert (by_name["ok"].status_code, by_name["ok"].status_message) == (StatusCode.OK, "")
    raised = by_name["raised"]
    assert raised.status_code is StatusCode.ERROR and "bad input" in raised.status_message
    (event,) = raised.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "bad input"
    assert "Traceback" in event.attributes["exception.stacktrace"]


def test_a_span_ended_twice_is_exported_once(build: Build) -> None:
    provider, sender = build()
    span = provider.get_tracer("t").start_span("once")
    span.end()
    span.end()
    assert [s.name for s in exported(provider, sender)] == ["once"]


@pytest.mark.parametrize(
    ("env", "root", "sampled_parent", "unsampled_parent"),
    [
        ({}, True, True, False),  # parentbased_always_on
        ({"OTEL_TRACES_SAMPLER": "always_on"}, True, True, True),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, False, False, False),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, False, True, False),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
            False,
            True,
            False,
        ),
        ({"OTEL_TRACES_SAMPLER": "xray"}, True, True, False),  # unsupported: the default
    ],
)
def test_samplers_from_the_environment(
    build: Build, env: dict[str, str], root: bool, sampled_parent: bool, unsampled_parent: bool
) -> None:
    provider, sender = build(**env)
    tracer = provider.get_tracer("t")
    for name, ctx in (
        ("root", context_api.Context()),
        ("sampled", remote_parent(True)),
        ("unsampled", remote_parent(False)),
    ):
        span = tracer.start_span(name, ctx)
        assert span.get_span_context().is_valid  # not recorded is still propagated
        span.end()
    names = {s.name for s in exported(provider, sender)}
    assert names == {
        n for n, on in (("root", root), ("sampled", sampled_parent), ("unsampled", unsampled_parent)) if on
    }


def test_ratio_sampling_agrees_with_the_sdk_rule() -> None:
    sampler = sampler_from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert sampler.sampled(None, (1 << 64) // 4 - 1) and not sampler.sampled(None, (1 << 64) // 4)
    assert (
        sampler.sampled(True, 0xFFFF_FFFF_FFFF_FFFF) is False
    )  # not parent-based: the parent does not matter
