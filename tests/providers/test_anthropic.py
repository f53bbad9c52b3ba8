"""Anthropic adapter: what guards look at in requests, responses and streams, and where it sits."""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import StreamText
from tests.providers.test_openai import assert_path_leads_to

A = AnthropicAdapter()


def test_scan_targets_cover_system_messages_tools_with_their_paths() -> None:
    body = {
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "plain"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "tool_use", "id": "t", "name": "read", "input": {"path": "/etc"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]}
                ],
            },
        ],
        "tools": [{"name": "read", "description": "reads", "input_schema": {"type": "object"}}],
    }
    targets = list(A.scan_targets(body))
    assert [(t.location, t.structured) for t in targets] == [
        ("system", False),
        ("user", False),
        ("assistant", False),
        ("tool_call", True),
        ("tool_result", False),
        ("tool_definition", True),
    ]
    for t in targets:
        assert_path_leads_to(body, t)


def test_output_targets_are_text_and_tool_use_blocks_not_thinking() -> None:
    body = {
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "input": {"q": 1}},
        ]
    }
    targets = list(A.output_targets(body))
    assert [(t.location, t.text) for t in targets] == [("output", "hi"), ("output_tool_call", '{"q":1}')]
    for t in targets:
        assert_path_leads_to(body, t)


def test_stream_texts_of_text_and_tool_input_deltas() -> None:
    text = {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "x"}}
    tool = {
        "type": "content_block_delta",
        "index": 3,
        "delta": {"type": "input_json_delta", "partial_json": "{"},
    }
    thinking = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "t"},
    }
    assert A.stream_texts(text) == [StreamText(("text", 2), "output", ("delta", "text"), "x")]
    assert A.stream_texts(tool) == [
        StreamText(("tool", 3), "output_tool_call", ("delta", "partial_json"), "{")
    ]
    assert A.stream_texts(thinking) == []  # signed: never rewritten
