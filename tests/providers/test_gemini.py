"""Gemini adapter: what guards look at in requests, responses and streams, and where it sits."""

from __future__ import annotations

from gateway.providers.base import StreamText
from gateway.providers.gemini import GeminiAdapter
from tests.providers.test_openai import assert_path_leads_to

A = GeminiAdapter()


def test_scan_targets_cover_system_contents_function_parts_and_tools() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "u"}]},
            {"role": "model", "parts": [{"text": "m"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"out": "r"}}}]},
        ],
        "tools": [{"functionDeclarations": [{"name": "f", "description": "d"}]}],
    }
    targets = list(A.scan_targets(body))
    assert [t.location for t in targets] == [
        "system",
        "user",
        "assistant",
        "tool_call",
        "tool_result",
        "tool_definition",
    ]
    for t in targets:
        assert_path_leads_to(body, t)


def test_embed_requests_are_scanned_too() -> None:
    single = {"content": {"parts": [{"text": "e"}]}}
    batch = {"requests": [{"content": {"parts": [{"text": "b"}]}}]}
    assert [t.text for t in A.scan_targets(single)] == ["e"]
    assert [t.text for t in A.scan_targets(batch)] == ["b"]


def test_output_targets_of_a_response_or_a_response_array() -> None:
    one = {"candidates": [{"content": {"parts": [{"text": "a", "thought": True}, {"text": "b"}]}}]}
    assert [t.text for t in A.output_targets(one)] == ["b"]
    many = [one, {"candidates": [{"content": {"parts": [{"functionCall": {"args": {"x": 1}}}]}}]}]
    targets = list(A.output_targets(many))
    assert [(t.location, t.text) for t in targets] == [("output", "b"), ("output_tool_call", '{"x":1}')]
    for t in targets:
        assert_path_leads_to(many, t)


def test_stream_texts_continue_the_candidate_and_function_calls_are_whole() -> None:
    chunk = {
        "candidates": [
            {"index": 0, "content": {"parts": [{"text": "x"}, {"functionCall": {"args": {"k": 1}}}]}}
        ]
    }
    text, call = A.stream_texts(chunk)
    assert text == StreamText(("text", 0), "output", ("candidates", 0, "content", "parts", 0, "text"), "x")
    assert not call.delta and call.structured and call.location == "output_tool_call"
