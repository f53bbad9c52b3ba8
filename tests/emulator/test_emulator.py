"""The official SDKs, pointed straight at the emulator, parse every endpoint and error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.types.chat import ChatCompletionMessageParam

from tests.emulator import SCENARIO_HEADER, Emulator
from tests.emulator.content import GREETING, GREETING_PIECES

OPENAI_PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
ANTHROPIC_PROMPT: list[MessageParam] = [{"role": "user", "content": "Say hello."}]


def openai_client(emu: Emulator, api_key: str = "sk-test", timeout: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=emu.base_url("openai") + "/v1", api_key=api_key, max_retries=0, timeout=timeout
    )


def anthropic_client(emu: Emulator, api_key: str = "sk-ant-test") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=emu.base_url("anthropic"), api_key=api_key, max_retries=0)


@pytest.fixture
async def openai_api(emulator: Emulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(emulator) as client:
        yield client


@pytest.fixture
async def anthropic_api(emulator: Emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic_client(emulator) as client:
        yield client


@pytest.fixture
async def gemini(emulator: Emulator) -> AsyncIterator[genai.client.AsyncClient]:
    client = genai.Client(
        api_key="gemini-test", http_options=genai_types.HttpOptions(base_url=emulator.base_url("gemini"))
    )
    async with client.aio as aio:
        yield aio


def scenario(name: str) -> dict[str, str]:
    return {SCENARIO_HEADER: name}


def gemini_scenario(name: str) -> genai_types.GenerateContentConfig:
    return genai_types.GenerateContentConfig(http_options=genai_types.HttpOptions(headers=scenario(name)))


# --- OpenAI -------------------------------------------------------------------------------------


async def test_openai_chat_completion(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    client = openai_api
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=OPENAI_PROMPT)
    completion = raw.parse()
    assert completion.choices[0].message.content == GREETING
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    assert usage.prompt_tokens_details.cached_tokens
    assert usage.completion_tokens_details.reasoning_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-request-id"] == "req_" + "0" * 32
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-ratelimit-remaining-requests"]
    request = emulator.requests[0]
    assert (request.provider, request.method, request.path) == ("openai", "POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json()["model"] == "gpt-4o-mini"


async def test_openai_chat_stream_without_usage(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    stream = await openai_api.chat.completions.create(model="gpt-4o", messages=OPENAI_PROMPT, stream=True)
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == list(GREETING_PIECES)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    # Without include_usage the real API omits the key entirely rather than sending null.
    assert b'"usage"' not in emulator.last_response_body
    assert emulator.last_response_body.endswith(b"data: [DONE]\n\n")


async def test_openai_chat_stream_with_usage(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    stream = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    *content_chunks, usage_chunk = chunks
    assert all(c.usage is None and len(c.choices) == 1 for c in content_chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.prompt_tokens_details
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens
    assert emulator.last_response_body.count(b'"usage":null') == len(content_chunks)


async def test_openai_responses(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    response = await openai_api.responses.create(model="gpt-4.1", input="Say hello.")
    assert response.output_text == GREETING
    assert response.status == "completed"
    assert response.model == "gpt-4.1"
    assert response.id.startswith("resp_")
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens
    assert response.usage.output_tokens_details.reasoning_tokens


async def test_openai_responses_stream(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    stream = await openai_api.responses.create(model="gpt-4.1", input="Say hello.", stream=True)
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == GREETING and len(deltas) > 1
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == GREETING
    assert completed.response.usage and completed.response.usage.output_tokens_details.reasoning_tokens
    # Every SSE event names its type on an `event:` line too.
    assert emulator.last_response_body.count(b"event: response.") == len(events)


async def test_openai_responses_stream_helper(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    async with openai_api.responses.stream(model="gpt-4.1", input="Say hello.") as stream:
        final = await stream.get_final_response()
    assert final.output_text == GREETING


async def test_openai_embeddings_default_base64_matches_floats(
    emulator: Emulator, openai_api: openai.AsyncOpenAI
) -> None:
    client = openai_api
    default = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    # The SDK asks for base64 when no format is given and decodes it back into floats.
    assert emulator.requests[0].json()["encoding_format"] == "base64"
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data) == 2 and len(default.data[0].embedding) == 1536
    assert default.usage.prompt_tokens > 0


async def test_openai_models(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    client = openai_api
    listed = [model.id async for model in client.models.list()]
    assert "gpt-4o-mini" in listed
    assert (await client.models.retrieve("gpt-4o-mini")).owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (403, openai.PermissionDeniedError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
async def test_openai_error_scenarios(
    emulator: Emulator,
    status: int,
    exception: type[openai.APIStatusError],
    error_type: str,
    openai_api: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(exception) as caught:
        await openai_api.chat.completions.create(
            model="gpt-4o", messages=OPENAI_PROMPT, extra_headers=scenario(f"error:{status}")
        )
    assert caught.value.status_code == status
    assert caught.value.type == error_type
    assert caught.value.request_id == "req_" + "0" * 32


async def test_openai_rejected_key(emulator: Emulator) -> None:
    async with openai_client(emulator, api_key="emulator-reject") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.code == "invalid_api_key"


async def test_openai_error_mid_stream(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    stream = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, stream=True, extra_headers=scenario("error-mid-stream:500")
    )
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in stream:
            pass


async def test_openai_gzip(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    completion = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, extra_headers=scenario("gzip")
    )
    assert completion.choices[0].message.content == GREETING
    assert emulator.responses[0].headers["Content-Encoding"] == "gzip"


async def test_openai_large_stream(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    size = 3_000_000
    stream = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, stream=True, extra_headers=scenario(f"large-stream:{size}")
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert sum(map(len, text)) >= size
    assert "".join(text[:6]).startswith(GREETING)


async def test_openai_large_body(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    size = 2_000_000
    completion = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, extra_headers=scenario(f"large-body:{size}")
    )
    text = completion.choices[0].message.content or ""
    assert len(text) >= size - 1000
    assert completion.usage is not None and completion.usage.completion_tokens >= len(text) // 4


async def test_openai_idle_stream_times_out_and_counts_cancel(emulator: Emulator) -> None:
    async with openai_client(emulator, timeout=0.5) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=OPENAI_PROMPT, stream=True, extra_headers=scenario("stall-after:2")
        )
        with pytest.raises(openai.APITimeoutError):
            async for _ in stream:
                pass
    await emulator.wait_cancelled(1)


async def test_openai_drop_mid_stream(emulator: Emulator, openai_api: openai.AsyncOpenAI) -> None:
    stream = await openai_api.chat.completions.create(
        model="gpt-4o", messages=OPENAI_PROMPT, stream=True, extra_headers=scenario("drop-mid-stream")
    )
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass
    assert emulator.cancelled == 0
    assert not emulator.responses[0].completed


# --- Anthropic ----------------------------------------------------------------------------------


async def test_anthropic_message(emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic) -> None:
    raw = await anthropic_api.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=ANTHROPIC_PROMPT
    )
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == GREETING
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-sonnet-4-5"
    assert message.id.startswith("msg_")
    assert message.usage.cache_read_input_tokens and message.usage.cache_creation_input_tokens
    assert message.usage.input_tokens and message.usage.output_tokens
    assert raw.headers["request-id"] == "req_" + "0" * 24
    assert raw.headers["anthropic-ratelimit-requests-limit"]
    assert emulator.requests[0].headers["anthropic-version"]


async def test_anthropic_stream_events(emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic) -> None:
    stream = await anthropic_api.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=ANTHROPIC_PROMPT, stream=True
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    # The SDK skips ping events; they are on the wire after content_block_start.
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(GREETING_PIECES),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert b'event: ping\ndata: {"type":"ping"}\n\n' in emulator.last_response_body
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.cache_read_input_tokens
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 1


async def test_anthropic_stream_helper(emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic) -> None:
    async with anthropic_api.messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=ANTHROPIC_PROMPT
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == GREETING
    assert final.usage.output_tokens > 1 and final.usage.cache_read_input_tokens


async def test_anthropic_count_tokens_and_models(
    emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic
) -> None:
    client = anthropic_api
    counted = await client.messages.count_tokens(model="claude-sonnet-4-5", messages=ANTHROPIC_PROMPT)
    assert counted.input_tokens > 0
    models = [model.id async for model in client.models.list()]
    assert "claude-sonnet-4-5-20250929" in models


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_anthropic_error_scenarios(
    emulator: Emulator,
    status: int,
    exception: type[anthropic.APIStatusError],
    error_type: str,
    anthropic_api: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(exception) as caught:
        await anthropic_api.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=8,
            messages=ANTHROPIC_PROMPT,
            extra_headers=scenario(f"error:{status}"),
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == error_type
    assert caught.value.body["request_id"] == caught.value.request_id


async def test_anthropic_rejected_key(emulator: Emulator) -> None:
    async with anthropic_client(emulator, api_key="emulator-reject") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.models.list()


async def test_anthropic_error_mid_stream(
    emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic
) -> None:
    stream = await anthropic_api.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=8,
        messages=ANTHROPIC_PROMPT,
        stream=True,
        extra_headers=scenario("error-mid-stream:529"),
    )
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async for _ in stream:
            pass


async def test_anthropic_large_stream(emulator: Emulator, anthropic_api: anthropic.AsyncAnthropic) -> None:
    size = 1_000_000
    async with anthropic_api.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=ANTHROPIC_PROMPT,
        extra_headers=scenario(f"large-stream:{size},gzip"),
    ) as stream:
        length = sum([len(piece) async for piece in stream.text_stream])
    assert length >= size


# --- Gemini -------------------------------------------------------------------------------------


async def test_gemini_generate_content(emulator: Emulator, gemini: genai.client.AsyncClient) -> None:
    response = await gemini.models.generate_content(model="gemini-2.5-flash", contents="Say hello.")
    assert response.text == GREETING
    assert response.model_version == "gemini-2.5-flash"
    assert response.candidates and response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage and usage.cached_content_token_count and usage.thoughts_token_count
    assert usage.total_token_count == (
        (usage.prompt_token_count or 0) + (usage.candidates_token_count or 0) + usage.thoughts_token_count
    )
    request = emulator.requests[0]
    # google-genai 3.x calls the v1 API unless told otherwise; the emulator serves v1 and v1beta.
    assert request.path == "/v1/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "gemini-test"


async def test_gemini_stream(emulator: Emulator, gemini: genai.client.AsyncClient) -> None:
    chunks = [
        chunk
        async for chunk in await gemini.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Hi"
        )
    ]
    assert "".join(chunk.text or "" for chunk in chunks) == GREETING
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert last.usage_metadata and last.usage_metadata.candidates_token_count
    assert last.usage_metadata.cached_content_token_count and last.usage_metadata.thoughts_token_count
    assert emulator.requests[0].query == "alt=sse"
    assert emulator.last_response_body.endswith(b"}\r\n\r\n")


async def test_gemini_count_embed_and_models(gemini: genai.client.AsyncClient) -> None:
    counted = await gemini.models.count_tokens(model="gemini-2.5-flash", contents="Hello there")
    assert counted.total_tokens
    embedded = await gemini.models.embed_content(model="text-embedding-004", contents=["a", "b"])
    assert embedded.embeddings and len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0].values or []) == 768
    names = [model.name async for model in await gemini.models.list()]
    assert "models/gemini-2.5-flash" in names
    model = await gemini.models.get(model="gemini-2.5-pro")
    assert model.display_name == "Gemini 2.5 Pro"


@pytest.mark.parametrize(
    ("status", "exception", "canonical"),
    [
        (400, genai_errors.ClientError, "INVALID_ARGUMENT"),
        (403, genai_errors.ClientError, "PERMISSION_DENIED"),
        (429, genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, genai_errors.ServerError, "INTERNAL"),
        (503, genai_errors.ServerError, "UNAVAILABLE"),
    ],
)
async def test_gemini_error_scenarios(
    gemini: genai.client.AsyncClient, status: int, exception: type[genai_errors.APIError], canonical: str
) -> None:
    with pytest.raises(exception) as caught:
        await gemini.models.generate_content(
            model="gemini-2.5-flash", contents="Hi", config=gemini_scenario(f"error:{status}")
        )
    assert caught.value.code == status
    assert caught.value.status == canonical


async def test_gemini_rejected_key(emulator: Emulator) -> None:
    client = genai.Client(
        api_key="emulator-reject", http_options=genai_types.HttpOptions(base_url=emulator.base_url("gemini"))
    )
    async with client.aio as aio:
        with pytest.raises(genai_errors.ClientError) as caught:
            await aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    # Like Google, a bad key is 400 INVALID_ARGUMENT with reason API_KEY_INVALID, not a 401.
    assert caught.value.code == 400
    assert "API_KEY_INVALID" in str(caught.value.details)


async def test_gemini_error_mid_stream(gemini: genai.client.AsyncClient) -> None:
    stream = await gemini.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Hi", config=gemini_scenario("error-mid-stream:503")
    )
    with pytest.raises(genai_errors.ServerError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code == 503


async def test_gemini_large_stream_gzip(gemini: genai.client.AsyncClient) -> None:
    size = 1_000_000
    stream = await gemini.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Hi", config=gemini_scenario(f"large-stream:{size},gzip")
    )
    length = 0
    async for chunk in stream:
        length += len(chunk.text or "")
    assert length >= size
