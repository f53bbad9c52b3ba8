"""OpenAI's Responses API: POST /v1/responses, as one ``response`` object or a typed event stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.content import CREATED_AT, GeneratedText, TokenUsage, text_chars
from tests.emulator.exchange import ErrorReply, Exchange, Failure, Reply, TextDocument, TextStream
from tests.emulator.openai_errors import required_model, stream_error_fields
from tests.emulator.sse import sse_event

# The final events of a stream repeat the whole text; past this many characters (large-stream
# scenario) they carry only its start, so the emulator never holds a huge text in memory.
FINAL_TEXT_LIMIT = 1024 * 1024


def response_usage(usage: TokenUsage) -> dict[str, Any]:
    """Responses usage: output tokens include reasoning, input tokens include cached."""
    output = usage.output + usage.reasoning
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + output,
    }


@dataclass(frozen=True, slots=True)
class _ResponseShell:
    """The parts of a ``response`` object that come from the request."""

    response_id: str
    message_id: str
    model: str
    request: Mapping[str, Any]

    def render(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        request = self.request
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": CREATED_AT,
            "status": status,
            "background": False,
            "completed_at": CREATED_AT + 1 if status == "completed" else None,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": request.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": request.get("metadata") or {},
        }

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        """The assistant message output item; ``text`` None means no content part yet."""
        content = [] if text is None else [output_text_part(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def create_response(exchange: Exchange) -> Reply:
    model = required_model(exchange)
    if isinstance(model, ErrorReply):
        return model
    if "input" not in exchange.body and "previous_response_id" not in exchange.body:
        return ErrorReply(400, Failure.INVALID_REQUEST, "Missing required parameter: 'input'.")
    shell = _ResponseShell(
        response_id="resp_" + exchange.digest[:48],
        message_id="msg_" + exchange.digest[16:64],
        model=model,
        request=exchange.body,
    )
    prompt_chars = text_chars(exchange.body.get("input")) + text_chars(exchange.body.get("instructions"))
    if exchange.body.get("stream") is True:
        obfuscate = (exchange.body.get("stream_options") or {}).get("include_obfuscation") is not False
        return TextStream(ResponseEventStream(shell, prompt_chars, exchange.digest[:10] if obfuscate else ""))

    def render(text: GeneratedText) -> dict[str, Any]:
        usage = response_usage(TokenUsage.estimate(prompt_chars, text.length))
        return shell.render("completed", [shell.message("completed", text.text)], usage)

    return TextDocument(render)


@dataclass(slots=True)
class ResponseEventStream:
    """``event: <type>`` + ``data: {…"type": <type>, "sequence_number": n…}`` events, no [DONE]."""

    shell: _ResponseShell
    prompt_chars: int
    obfuscation: str  # "" when the client turned stream obfuscation off
    content_type: str = field(default="text/event-stream; charset=utf-8", init=False)
    _sequence: int = field(default=0, init=False)

    def events(self, pieces: Iterable[str]) -> Iterator[bytes]:
        shell = self.shell
        item = {"output_index": 0, "item_id": shell.message_id}
        part = {**item, "content_index": 0}
        yield self._event("response.created", response=shell.render("in_progress", [], None))
        yield self._event("response.in_progress", response=shell.render("in_progress", [], None))
        yield self._event(
            "response.output_item.added", output_index=0, item=shell.message("in_progress", None)
        )
        yield self._event("response.content_part.added", **part, part=output_text_part(""))
        chars, kept = 0, []
        for piece in pieces:
            chars += len(piece)
            if chars <= FINAL_TEXT_LIMIT:
                kept.append(piece)
            delta = {**part, "delta": piece, "logprobs": []}
            if self.obfuscation:
                delta["obfuscation"] = self.obfuscation
            yield self._event("response.output_text.delta", **delta)
        text = "".join(kept)
        yield self._event("response.output_text.done", **part, text=text, logprobs=[])
        yield self._event("response.content_part.done", **part, part=output_text_part(text))
        message = shell.message("completed", text)
        yield self._event("response.output_item.done", output_index=0, item=message)
        usage = response_usage(TokenUsage.estimate(self.prompt_chars, chars))
        yield self._event("response.completed", response=shell.render("completed", [message], usage))

    def error_event(self, status: int) -> bytes:
        fields = stream_error_fields(status)
        return self._event(
            "error", code=fields["code"] or fields["type"], message=fields["message"], param=None
        )

    def _event(self, event_type: str, **fields: Any) -> bytes:
        data = {"type": event_type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(data, event=event_type)
