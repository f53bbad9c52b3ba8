"""The hand-written OTLP encoding decodes, with the official protobuf classes, to what was encoded."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from gateway.telemetry import otlp_encoding as otlp
from tests.telemetry.otlp_receiver import attributes

scalars = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(st.text(), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
)


def decoded(encoder: otlp.AttributeEncoder, attrs: dict[str, Any]) -> dict[str, Any]:
    """Encode `attrs` as Resource attributes and read them back."""
    return attributes(Resource.FromString(otlp.resource(encoder, attrs)).attributes)


@given(st.dictionaries(st.text(min_size=1), values, max_size=8))
def test_attribute_values_round_trip(attrs: dict[str, Any]) -> None:
    encoder = otlp.AttributeEncoder()
    for _ in range(2):  # a miss, then the cached encoding
        assert decoded(encoder, attrs) == attrs


def test_equal_values_of_different_types_do_not_share_a_cache_entry() -> None:
    encoder = otlp.AttributeEncoder()
    for value in (True, 1, 1.0):
        (kv,) = Resource.FromString(otlp.resource(encoder, {"k": value})).attributes
        assert isinstance(kv, KeyValue)
        assert (
            kv.value.WhichOneof("value")
            == {bool: "bool_value", int: "int_value", float: "double_value"}[type(value)]
        )


def test_values_the_api_does_not_allow_are_left_out() -> None:
    encoder = otlp.AttributeEncoder()
    attrs = {"ok": "x", "huge": 2**64, "object": object(), "list": ["a", "b"]}
    assert decoded(encoder, attrs) == {"ok": "x", "list": ("a", "b")}


def test_the_cache_is_bounded() -> None:
    encoder = otlp.AttributeEncoder(max_entries=8)
    for n in range(100):
        encoder.encode("id", f"value-{n}")
    assert len(encoder._cache) <= 8


def test_a_full_span_with_events_links_and_status_decodes() -> None:
    encoder = otlp.AttributeEncoder()
    trace_id, span_id, parent = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0x1122334455667788
    body = [
        otlp.span_prefix(trace_id, span_id, "vendor=x", parent),
        encoder.name("chat gpt-4o-mini"),
        b"\x30\x03",  # CLIENT
        otlp.span_times(1_000, 2_000),
        *encoder.fields(otlp.SPAN_ATTRIBUTE_TAG, {"gen_ai.operation.name": "chat", "n": 3}),
        b"\x50" + otlp.varint(2),
        otlp.delimited(b"\x5a", otlp.event(encoder, "first", 1_500, {"rule": "aws"}, 1)),
        b"\x60" + otlp.varint(5),
        otlp.delimited(b"\x6a", otlp.link(encoder, trace_id, 7, "", 1, True, {"why": "retry"}, 0)),
        otlp.delimited(b"\x7a", otlp.status(otlp.STATUS_ERROR, "upstream_timeout")),
        otlp.span_flags(1, True),
    ]
    scope = otlp.scope("llm_gateway", "0.1.0", {"scope.attr": "s"})
    resource = otlp.resource(encoder, {"service.name": "gw"})
    payload = otlp.export_request(resource, [(scope, "https://schema", [otlp.span_message(body)])])

    request = ExportTraceServiceRequest.FromString(payload)
    (rs,) = request.resource_spans
    assert attributes(rs.resource.attributes) == {"service.name": "gw"}
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version, ss.schema_url) == ("llm_gateway", "0.1.0", "https://schema")
    assert attributes(ss.scope.attributes) == {"scope.attr": "s"}
    (span,) = ss.spans
    assert span.trace_id == trace_id.to_bytes(16, "big") and span.span_id == span_id.to_bytes(8, "big")
    assert span.parent_span_id == parent.to_bytes(8, "big") and span.trace_state == "vendor=x"
    assert (span.name, span.kind) == ("chat gpt-4o-mini", trace_pb2.Span.SPAN_KIND_CLIENT)
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1_000, 2_000)
    assert attributes(span.attributes) == {"gen_ai.operation.name": "chat", "n": 3}
    assert span.dropped_attributes_count == 2 and span.dropped_events_count == 5
    (event,) = span.events
    assert (event.name, event.time_unix_nano, event.dropped_attributes_count) == ("first", 1_500, 1)
    assert attributes(event.attributes) == {"rule": "aws"}
    (link,) = span.links
    assert link.span_id == (7).to_bytes(8, "big") and attributes(link.attributes) == {"why": "retry"}
    assert link.flags == 0x301
    assert span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert span.status.message == "upstream_timeout"
    assert span.flags & trace_pb2.SPAN_FLAGS_TRACE_FLAGS_MASK == 1
    assert span.flags & trace_pb2.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    assert span.flags & trace_pb2.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def test_a_root_span_says_nothing_about_a_remote_parent() -> None:
    flags = int.from_bytes(otlp.span_flags(1, None)[2:], "little")
    assert flags == 1
