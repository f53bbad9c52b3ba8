"""The output guard on its own: complete bodies, and streams cut at every possible place."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import ProviderAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter
from gateway.sse import SSEParser
from gateway.stages.scan.guard import Guard, replace_spans
from gateway.stages.scan.output import OutputBlocked, ResponseGuard, replace_event_data
from gateway.stages.scan.settings import GuardSettings
from tests.stages.test_scan_detectors import URLSAFE, fake

KEY = f"sk-proj-{fake(80, URLSAFE)}"
EMAIL = "jane.doe@acme-corp.io"
OPENAI, ANTHROPIC, GEMINI = OpenAIAdapter(), AnthropicAdapter(), GeminiAdapter()


def guard(**guards: Any) -> Guard:
    return Guard(GuardSettings(**guards))


def response_guard(g: Guard, adapter: ProviderAdapter = OPENAI) -> ResponseGuard:
    return ResponseGuard(g, g.resolver(None), adapter, acts=True)


REDACT_OUTPUT = {"actions": {"credential": {"output": "redact"}}, "streams": "hold"}
BLOCK_OUTPUT = {"actions": {"credential": {"output": "block"}}, "streams": "hold"}


# --- stream builders: the providers' own event shapes ----------------------------------------------


def openai_chat_stream(pieces: list[str]) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events += [chunk({}, "stop"), b"data: [DONE]"]
    return b"".join(e + b"\n\n" for e in events)


def anthropic_stream(pieces: list[str]) -> bytes:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    out = event("message_start", {"message": {"id": "m", "usage": {"input_tokens": 3}}})
    out += event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for p in pieces:
        out += event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
    out += event("content_block_stop", {"index": 0})
    return out + event("message_stop", {})


def gemini_stream(pieces: list[str]) -> bytes:
    out = b""
    for p in pieces:
        data = {"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}]}
        out += b"data: " + orjson.dumps(data) + b"\r\n\r\n"
    return out


STREAMS = {"openai": (OPENAI, openai_chat_stream), "anthropic": (ANTHROPIC, anthropic_stream)}
STREAMS["gemini"] = (GEMINI, gemini_stream)


def streamed_text(adapter: ProviderAdapter, stream: bytes) -> str:
    """The output text a client assembles from a stream."""
    parser = SSEParser()
    text = []
    for event in parser.feed(stream):  # complete events only
        if event.data.startswith(b"{"):
            text += [t.text for t in adapter.stream_texts(orjson.loads(event.data)) if t.delta]
    return "".join(text)


def relay(rg: ResponseGuard, stream: bytes, cuts: list[int]) -> bytes:
    """Feed `stream` cut at `cuts` through the held-stream filter; what the client would get."""
    sg = rg.stream()
    out = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out.append(sg.filter(stream[start:cut]))
        start = cut
    out.append(sg.flush())
    return b"".join(out)


def pieces_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- holding and redacting streams -------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(STREAMS))
def test_a_held_stream_is_redacted_across_event_boundaries(provider: str) -> None:
    adapter, build = STREAMS[provider]
    g = guard(**REDACT_OUTPUT)
    text = f"Your key is {KEY} and that is all. " + "Some more words follow here. " * 20
    stream = build(pieces_of(text, 7))
    rg = response_guard(g, adapter)
    released = relay(rg, stream, [])
    got = streamed_text(adapter, released)
    assert KEY not in got and KEY[:20] not in got.replace("[REDACTED:openai_api_key]", "")
    assert got == text.replace(KEY, "[REDACTED:openai_api_key]")
    (finding,) = rg.findings.all()
    assert (finding.rule, finding.location, finding.action) == ("openai_api_key", "output", "redact")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    piece=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
    before=st.text(alphabet="abc .,\n", max_size=300),
    after=st.text(alphabet="xyz .,\n", max_size=300),
)
def test_held_stream_output_equals_the_redacted_text_however_it_is_cut(
    piece: int, cuts: list[int], before: str, after: str
) -> None:
    g = guard(**REDACT_OUTPUT)
    text = f"{before} {KEY} {after} write to {EMAIL}"
    stream = openai_chat_stream(pieces_of(text, piece))
    released = relay(response_guard(g), stream, [c % (len(stream) + 1) for c in cuts])
    expected = replace_spans(
        text, [(m.start, m.end, m.rule) for m in g.matches(text) if m.rule.endswith("key")]
    )
    assert streamed_text(OPENAI, released) == expected


def test_text_is_held_back_only_by_hold_chars() -> None:
    g = guard(**REDACT_OUTPUT, hold_chars=50)
    sg = response_guard(g).stream()
    words = openai_chat_stream(pieces_of("word " * 100, 5))
    released = sg.filter(words[: len(words) // 2])
    held = len(streamed_text(OPENAI, words[: len(words) // 2])) - len(streamed_text(OPENAI, released))
    assert 0 < held <= 50 + 5


def test_a_match_still_growing_is_held_past_hold_chars_then_redacted_whole() -> None:
    g = guard(**REDACT_OUTPUT, hold_chars=32, hold_max_chars=4096)
    long_key = f"sk-proj-{fake(200, URLSAFE, 7)}"  # recognised after 23 characters, held till it ends
    text = f"start {long_key} end of the answer " + "and then some more text. " * 4
    released = relay(response_guard(g), openai_chat_stream(pieces_of(text, 3)), [])
    assert streamed_text(OPENAI, released) == text.replace(long_key, "[REDACTED:openai_api_key]")


def test_hold_max_chars_bounds_what_is_held_and_says_so() -> None:
    g = guard(**REDACT_OUTPUT, hold_chars=32, hold_max_chars=64)
    huge = f"sk-proj-{fake(250, URLSAFE, 8)}"  # a match longer than anything may be held
    rg = response_guard(g)
    relay(rg, openai_chat_stream(pieces_of(f"go {huge} stop", 4)), [])
    assert ("scan_truncated", "output") in {(f.rule, f.location) for f in rg.findings.all()}


@pytest.mark.parametrize("provider", list(STREAMS))
def test_a_blocked_stream_releases_only_what_came_before_the_match(provider: str) -> None:
    adapter, build = STREAMS[provider]
    g = guard(**BLOCK_OUTPUT)
    text = "Intro sentence that is long enough to be released early. " * 10 + f"then {KEY} and more"
    rg = response_guard(g, adapter)
    sg = rg.stream()
    stream = build(pieces_of(text, 9))
    released = b""
    with pytest.raises(OutputBlocked) as blocked:
        for i in range(0, len(stream), 50):
            released += sg.filter(stream[i : i + 50])
        sg.flush()
    released += blocked.value.released
    assert blocked.value.error.rule == "guards.openai_api_key" and KEY not in blocked.value.error.message
    got = streamed_text(adapter, released)
    assert "sk-proj" not in got and text.startswith(got) and len(got) > 100


def test_whole_texts_of_final_events_are_redacted_too() -> None:
    """A Responses stream repeats the full text in its .done and response.completed events."""
    g = guard(**REDACT_OUTPUT)
    done = {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": f"k {KEY}"}
    event = b"event: response.output_text.done\ndata: " + orjson.dumps(done) + b"\n\n"
    released = relay(response_guard(g), event, [])
    assert KEY not in released.decode() and b"[REDACTED:openai_api_key]" in released


def test_log_mode_never_holds_but_a_block_still_ends_the_stream() -> None:
    g = guard(actions={"credential": {"output": "block"}}, streams="log")
    rg = ResponseGuard(g, g.resolver(None), OPENAI, acts=True)
    assert rg.holds_body and not rg.holds_stream
    rg.stream()
    stream = openai_chat_stream(pieces_of("fine text " * 40 + KEY, 8))
    for i in range(0, len(stream), 64):
        rg.observe(stream[i : i + 64])
        if rg.stopped is not None:
            break
    assert rg.stopped is not None and i < len(stream) - 64
    assert [(f.rule, f.action) for f in rg.findings.all()] == [("openai_api_key", "block")]


def test_log_mode_records_a_redact_as_log() -> None:
    g = guard(actions={"credential": {"output": "redact"}}, streams="log")
    rg = ResponseGuard(g, g.resolver(None), OPENAI, acts=True)
    rg.stream()
    rg.observe(openai_chat_stream(pieces_of(f"a {KEY} b", 5)))
    rg.close()
    assert [(f.rule, f.action) for f in rg.findings.all()] == [("openai_api_key", "log")]


def test_replace_event_data_keeps_the_other_fields_and_line_endings() -> None:
    raw = b"event: x\r\nid: 7\r\ndata: {}\r\n\r\n"
    assert replace_event_data(raw, b'{"a":1}') == b'event: x\r\nid: 7\r\ndata: {"a":1}\r\n\r\n'


# --- complete bodies ---------------------------------------------------------------------------------


def chat_body(text: str) -> bytes:
    message = {"role": "assistant", "content": text, "refusal": None}
    return orjson.dumps({"id": "c", "choices": [{"index": 0, "message": message}], "usage": {"total": 1}})


def test_a_complete_body_is_redacted_keeping_every_other_byte() -> None:
    g = guard(actions={"credential": {"output": "redact"}})
    body = chat_body(f"use {KEY} today")
    out = response_guard(g).check_body(body)
    assert out == body.replace(KEY.encode(), b"[REDACTED:openai_api_key]")


def test_pii_in_a_complete_body_is_redacted() -> None:
    g = guard(actions={"pii": {"output": "redact"}})
    body = chat_body(f"mail {EMAIL} today")
    out = response_guard(g).check_body(body)
    assert out == body.replace(EMAIL.encode(), b"[REDACTED:email_address]")


def test_a_complete_body_is_blocked() -> None:
    g = guard(actions={"credential": {"output": "block"}})
    with pytest.raises(OutputBlocked) as blocked:
        response_guard(g).check_body(chat_body(f"the key: {KEY}"))
    assert "openai_api_key" in blocked.value.error.message and KEY not in blocked.value.error.message


@pytest.mark.parametrize(
    ("adapter", "body", "location"),
    [
        (
            OPENAI,
            {"choices": [{"message": {"tool_calls": [{"function": {"arguments": f'{{"k": "{KEY}"}}'}}]}}]},
            "output_tool_call",
        ),
        (
            OPENAI,
            {"object": "response", "output": [{"content": [{"type": "output_text", "text": KEY}]}]},
            "output",
        ),
        (ANTHROPIC, {"content": [{"type": "tool_use", "input": {"key": KEY}}]}, "output_tool_call"),
        (GEMINI, [{"candidates": [{"content": {"parts": [{"text": KEY}]}}]}], "output"),
        (
            GEMINI,
            {"candidates": [{"content": {"parts": [{"functionCall": {"args": {"k": KEY}}}]}}]},
            "output_tool_call",
        ),
    ],
)
def test_every_kind_of_output_is_redacted(adapter: ProviderAdapter, body: Any, location: str) -> None:
    g = guard(actions={"credential": {"response": "redact"}})
    rg = response_guard(g, adapter)
    out = rg.check_body(orjson.dumps(body))
    assert KEY not in out.decode() and b"[REDACTED:openai_api_key]" in out
    orjson.loads(out)  # still JSON
    assert [(f.location, f.action) for f in rg.findings.all()] == [(location, "redact")]


def test_an_observed_body_is_scanned_after_it_is_sent() -> None:
    g = guard()  # defaults: credentials in output are logged
    rg = ResponseGuard(g, g.resolver(None), OPENAI, acts=False)
    body = chat_body(f"the key: {KEY}")
    rg.observe(body[:10])
    rg.observe(body[10:])
    rg.close()
    assert [(f.rule, f.location, f.action) for f in rg.findings.all()] == [
        ("openai_api_key", "output", "log")
    ]


def test_an_event_too_large_to_frame_goes_on_and_says_it_was_not_scanned() -> None:
    g = guard(**REDACT_OUTPUT)
    rg = response_guard(g)
    huge = openai_chat_stream(["x" * (1 << 20) + " " + KEY])  # one event over the framer's 1 MiB bound
    end = huge.index(b"\n\n", 1 << 20)
    released = relay(rg, huge, [4096, end - 10])  # more than 1 MiB of it arrives before its end
    assert released == huge  # relayed as it came: bytes are never lost
    assert ("scan_truncated", "output") in {(f.rule, f.location) for f in rg.findings.all()}
