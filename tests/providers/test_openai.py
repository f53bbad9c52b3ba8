"""OpenAI adapter: request views, the include_usage injection and its stripping, usage parsing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import ErrorCode, GatewayError
from gateway.providers.base import StreamText, TextTarget
from gateway.providers.openai import OpenAIAdapter, UsageChunkStripper
from gateway.providers.parsing import JsonResponseParser

A = OpenAIAdapter()


def test_include_usage_is_inserted_leaving_the_rest_byte_identical() -> None:
    body = b'{"model": "m",  "stream": true, "messages": []}'
    view = A.parse_request("POST", "/v1/chat/completions", "", body)
    sent, stripper = A.prepare_upstream(view)
    assert stripper is not None
    assert sent == b'{"stream_options":{"include_usage":true},"model": "m",  "stream": true, "messages": []}'
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True}


def test_client_that_asked_for_usage_is_left_alone() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
    view = A.parse_request("POST", "/v1/chat/completions", "", body)
    assert A.prepare_upstream(view) == (body, None)
    other = b'{"model":"m","stream":false,"messages":[]}'
    assert A.prepare_upstream(A.parse_request("POST", "/v1/chat/completions", "", other)) == (other, None)


def test_stripper_removes_usage_chunk_and_nulls_at_any_split() -> None:
    chunk = b'data: {"id":"1","choices":[{"delta":{"content":"hi"}}],"usage":null,"obfuscation":"ab"}\n\n'
    usage = b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    upstream = chunk + usage + b"data: [DONE]\n\n"
    expected = (
        b'data: {"id":"1","choices":[{"delta":{"content":"hi"}}],"obfuscation":"ab"}\n\ndata: [DONE]\n\n'
    )
    for size in (1, 5, 17, len(upstream)):
        s = UsageChunkStripper()
        out = b"".join(s.filter(upstream[i : i + size]) for i in range(0, len(upstream), size)) + s.flush()
        assert out == expected


def test_malformed_json_is_a_400_in_openai_shape() -> None:
    with pytest.raises(GatewayError) as info:
        A.parse_request("POST", "/v1/chat/completions", "", b"{oops")
    assert info.value.status == 400
    body = orjson.loads(A.render_error(info.value))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert orjson.loads(A.render_error(GatewayError(ErrorCode.UPSTREAM_TIMEOUT, "t")))["error"]["code"]


def test_usage_from_the_tail_of_a_body_too_large_to_parse() -> None:
    from gateway.providers.openai import OpenAIAccumulator

    body = b'{"object":"list","data":[' + b",".join([b'{"embedding":[0.1,0.2]}'] * 20000) + b"]"
    body += b',"model":"e","usage":{"prompt_tokens":7,"total_tokens":7}}'
    parser = JsonResponseParser(OpenAIAccumulator(100), limit=1024)
    for i in range(0, len(body), 4096):
        parser.feed(body[i : i + 4096])
    assert parser.summary().usage.input_tokens == 7


def test_scan_targets_cover_roles_tools_and_responses_input_with_their_paths() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "u"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": '{"a":1}'}}]},
            {"role": "tool", "content": "result"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
    }
    targets = list(A.scan_targets(chat))
    assert [(t.location, t.text) for t in targets] == [
        ("system", "sys"),
        ("user", "u"),
        ("tool_call", '{"a":1}'),
        ("tool_result", "result"),
        ("tool_definition", '{"type":"function","function":{"name":"f","description":"d"}}'),
    ]
    for t in targets:
        assert_path_leads_to(chat, t)
    assert targets[-1].structured and not targets[0].structured
    responses = {
        "instructions": "i",
        "input": [{"role": "user", "content": "x"}, {"type": "function_call_output", "output": "o"}],
    }
    targets = list(A.scan_targets(responses))
    assert [(t.location, t.text) for t in targets] == [("system", "i"), ("user", "x"), ("tool_result", "o")]
    for t in targets:
        assert_path_leads_to(responses, t)


def assert_path_leads_to(body: Any, target: TextTarget) -> None:
    node = body
    for step in target.path:
        node = node[step]
    assert (orjson.dumps(node).decode() if target.structured else node) == target.text


def test_output_targets_of_chat_responses_and_completions() -> None:
    chat = {
        "choices": [
            {"message": {"content": "hello", "tool_calls": [{"function": {"arguments": '{"q":"x"}'}}]}},
            {"text": "legacy"},
        ]
    }
    assert [(t.location, t.text) for t in A.output_targets(chat)] == [
        ("output", "hello"),
        ("output_tool_call", '{"q":"x"}'),
        ("output", "legacy"),
    ]
    response = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
            {"type": "function_call", "arguments": '{"a":2}'},
        ],
    }
    targets = list(A.output_targets(response))
    assert [(t.location, t.text) for t in targets] == [("output", "hi"), ("output_tool_call", '{"a":2}')]
    for body, t in [(chat, x) for x in A.output_targets(chat)] + [(response, x) for x in targets]:
        assert_path_leads_to(body, t)


def test_stream_texts_of_chat_chunks_and_responses_events() -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {"content": "He"}},
            {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a'}}]}},
        ]
    }
    assert A.stream_texts(chunk) == [
        StreamText(("text", 0), "output", ("choices", 0, "delta", "content"), "He"),
        StreamText(
            ("tool", 1, 0),
            "output_tool_call",
            ("choices", 1, "delta", "tool_calls", 0, "function", "arguments"),
            '{"a',
        ),
    ]
    delta = {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "x"}
    assert A.stream_texts(delta) == [StreamText(("text", 1, 0), "output", ("delta",), "x")]
    done = {
        "type": "response.completed",
        "response": {"output": [{"content": [{"type": "output_text", "text": "all"}]}]},
    }
    (whole,) = A.stream_texts(done)
    assert (
        not whole.delta
        and whole.text == "all"
        and whole.path == ("response", "output", 0, "content", 0, "text")
    )
    assert A.stream_texts({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == []
