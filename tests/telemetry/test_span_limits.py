"""Attribute values as the API allows them, and span limits from the environment."""

from __future__ import annotations

from gateway.telemetry.span_limits import INVALID, SpanLimits, bounded_attributes, clean_value


def test_values_the_api_allows_and_the_ones_it_does_not() -> None:
    assert clean_value("abcdef", 3) == "abc"
    assert clean_value(["a", None, "bcd"], 2) == ("a", None, "bc")  # None may stand in a sequence
    assert clean_value((1, 2.5), None) is INVALID  # not homogeneous
    assert clean_value(None, None) is INVALID
    assert clean_value(b"raw", None) is INVALID
    assert clean_value({"a": 1}, None) is INVALID


def test_bounded_attributes_keep_the_first_and_count_the_rest() -> None:
    kept, dropped = bounded_attributes({"a": 1, "b": None, "c": "x", "d": 2.0}, 2, None)
    assert kept == {"a": 1, "c": "x"} and dropped == 1  # an invalid value is not counted, as in the SDK


def test_limits_from_the_environment_and_the_defaults_on_bad_values() -> None:
    env = {"OTEL_ATTRIBUTE_COUNT_LIMIT": "16", "OTEL_SPAN_EVENT_COUNT_LIMIT": "4"}
    assert SpanLimits.from_env(env) == SpanLimits(attributes=16, events=4)
    specific = {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "8", "OTEL_ATTRIBUTE_COUNT_LIMIT": "16"}
    assert SpanLimits.from_env(specific).attributes == 8
    bad = {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "many", "OTEL_ATTRIBUTE_COUNT_LIMIT": "-1"}
    assert SpanLimits.from_env(bad) == SpanLimits()
