"""The emulator: one aiohttp server that speaks OpenAI, Anthropic and Gemini under URL prefixes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.emulator.anthropic import AnthropicEmulator
from tests.emulator.content import (
    Answer,
    GeneratedText,
    large_document_chunks,
    large_stream_pieces,
    request_digest,
)
from tests.emulator.delivery import ConnectionDropped, RecordedResponse, ResponseSender, accepts_gzip
from tests.emulator.exchange import (
    Document,
    ErrorReply,
    Exchange,
    Failure,
    ProviderEmulator,
    Reply,
    Route,
    TextDocument,
    TextStream,
)
from tests.emulator.gemini import GeminiEmulator
from tests.emulator.openai import OpenAIEmulator
from tests.emulator.scenarios import SCENARIO_HEADER, Scenario, ScenarioError, parse_scenario

# Requests up to this size are accepted (aiohttp's default of 1 MiB is too small for prompt tests).
MAX_REQUEST_BYTES = 256 * 1024 * 1024
# stop() waits this long for in-flight responses (e.g. stalled streams) before cancelling them.
SHUTDOWN_GRACE_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request exactly as the emulator received it."""

    index: int
    provider: str  # "openai", "anthropic" or "gemini"
    method: str
    path: str  # without the provider prefix, e.g. "/v1/chat/completions"
    query: str  # raw query string, without "?"
    headers: CIMultiDict[str]  # case-insensitive copy
    body: bytes
    scenario: str | None  # the scenario text in force (header, else the emulator default)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


class Emulator:
    """An upstream that answers like the real provider APIs, deterministically, with scenarios."""

    def __init__(self, scenario: str | None = None, host: str = "127.0.0.1") -> None:
        self.scenario = scenario  # default scenario for requests without the scenario header
        self.requests: list[RecordedRequest] = []
        self.responses: dict[int, RecordedResponse] = {}  # by request index
        self.cancelled = 0  # responses cut short because the peer went away
        self._cancel_signal = asyncio.Event()  # set whenever `cancelled` grows
        self._host = host
        self._providers: dict[str, ProviderEmulator] = {
            provider.name: provider for provider in (OpenAIEmulator(), AnthropicEmulator(), GeminiEmulator())
        }
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._stopping = False

    async def start(self) -> str:
        """Listen on a free port of ``host``; returns the base URL, e.g. http://127.0.0.1:PORT."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that disconnects cancels its handler at once, which is how
        # `cancelled` is counted while a stream stalls.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()
        host, port = runner.addresses[0][:2]
        self._runner, self._url, self._stopping = runner, f"http://{host}:{port}", False
        return self._url

    async def stop(self) -> None:
        """Close the server; in-flight responses are cancelled (not counted as `cancelled`)."""
        if self._runner is not None:
            self._stopping = True
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL returned by start()."""
        if not self._url:
            raise RuntimeError("the emulator is not started")
        return self._url

    def base_url(self, provider: str) -> str:
        """Where a provider's API lives, e.g. base_url("openai") + "/v1/chat/completions"."""
        if provider not in self._providers:
            raise ValueError(f"unknown provider {provider!r}; known: {', '.join(self._providers)}")
        return f"{self.url}/{provider}"

    @property
    def sent_bytes(self) -> dict[int, bytes]:
        """Uncompressed bytes written per request index, for responses recorded whole."""
        return {index: r.body for index, r in self.responses.items() if not r.truncated}

    @property
    def last_response_body(self) -> bytes:
        """Uncompressed body of the latest response (its start, if it was very large)."""
        if not self.responses:
            raise LookupError("the emulator has not answered any request")
        return self.responses[max(self.responses)].body

    async def wait_cancelled(self, count: int = 1, within: float = 5.0) -> None:
        """Wait until ``cancelled`` reaches ``count``: the server notices a disconnect asynchronously."""
        async with asyncio.timeout(within):
            while self.cancelled < count:
                self._cancel_signal.clear()
                await self._cancel_signal.wait()

    def reset(self) -> None:
        """Forget recorded requests, responses and the cancellation count."""
        self.requests.clear()
        self.responses.clear()
        self.cancelled = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        prefix, _, rest = request.match_info["tail"].partition("/")
        provider = self._providers.get(prefix)
        if provider is None:
            known = ", ".join(f"/{name}" for name in self._providers)
            return web.Response(status=404, text=f"emulator: unknown provider prefix /{prefix}; use {known}")
        recorded = await self._record_request(request, provider.name, path="/" + rest)
        record = self.responses[recorded.index] = RecordedResponse()
        reply: Reply | None = None
        try:
            scenario = parse_scenario(recorded.scenario)
        except ScenarioError as exc:
            scenario, reply = Scenario(), ErrorReply(400, Failure.INVALID_REQUEST, str(exc))
        compress = scenario.gzip and accepts_gzip(request.headers.get("Accept-Encoding", ""))
        sender = ResponseSender(request, scenario, record, compress)
        try:
            if scenario.slow_first_byte:
                await asyncio.sleep(scenario.slow_first_byte)
            reply = reply or _answer(provider, request, recorded, scenario)
            answer = Answer.from_headers(request.headers)
            await _deliver(provider, sender, provider.request_id(recorded.index), reply, scenario, answer)
        except ConnectionDropped:
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                self._count_cancel()
            raise
        except ConnectionResetError:
            self._count_cancel()
        return sender.response or web.Response(status=499)

    async def _record_request(self, request: web.Request, provider: str, path: str) -> RecordedRequest:
        body = await request.read()  # before taking an index: concurrent requests interleave here
        recorded = RecordedRequest(
            index=len(self.requests),
            provider=provider,
            method=request.method,
            path=path,
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            body=body,
            scenario=request.headers.get(SCENARIO_HEADER, self.scenario),
        )
        self.requests.append(recorded)
        return recorded

    def _count_cancel(self) -> None:
        self.cancelled += 1
        self._cancel_signal.set()


def _answer(
    provider: ProviderEmulator, request: web.Request, recorded: RecordedRequest, scenario: Scenario
) -> Reply:
    """Decide the reply, checking in the order the real APIs do: auth, route, then the body."""
    if scenario.error_status is not None:
        return ErrorReply(scenario.error_status, Failure.SCENARIO)
    refusal = provider.admit(request)
    if refusal is not None:
        return refusal
    found = _match(provider.routes, request.method, recorded.path)
    if found is None:
        return ErrorReply(404, Failure.UNKNOWN_ROUTE, f"{request.method} {recorded.path}")
    route, params = found
    parsed: Any = {}
    if route.json_body:
        try:
            parsed = orjson.loads(recorded.body)
        except orjson.JSONDecodeError:
            return ErrorReply(400, Failure.MALFORMED_JSON)
        if not isinstance(parsed, dict):
            return ErrorReply(400, Failure.MALFORMED_JSON)
    exchange = Exchange(
        index=recorded.index,
        method=request.method,
        path=recorded.path,
        query=request.query,
        headers=request.headers,
        body=parsed,
        params=params,
        scenario=scenario,
        digest=request_digest(recorded.path, parsed),
    )
    return route.handler(exchange)


def _match(routes: Sequence[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in routes:
        found = route.pattern.fullmatch(path)
        if found is not None and route.method == method:
            return route, found.groupdict()
    return None


async def _deliver(
    provider: ProviderEmulator,
    sender: ResponseSender,
    request_id: str,
    reply: Reply,
    scenario: Scenario,
    answer: Answer,
) -> None:
    json_headers = {**provider.response_headers(request_id, 200), "Content-Type": provider.json_content_type}
    match reply:
        case ErrorReply(status=status):
            headers = {
                **provider.response_headers(request_id, status),
                "Content-Type": provider.json_content_type,
            }
            await sender.send_document(status, headers, provider.error_body(reply, request_id))
        case Document(body=document):
            await sender.send_document(200, json_headers, provider.encode_json(document))
        case TextDocument(render=render) if scenario.large_body:
            chunks = large_document_chunks(provider.encode_json, render, scenario.large_body)
            await sender.send_chunks(json_headers, chunks)
        case TextDocument(render=render):
            body = provider.encode_json(render(GeneratedText.of(answer.text)))
            await sender.send_document(200, json_headers, body)
        case TextStream(stream=stream):
            pieces: Iterable[str] = (
                large_stream_pieces(scenario.large_stream) if scenario.large_stream else answer.pieces
            )
            headers = {**provider.response_headers(request_id, 200), "Content-Type": stream.content_type}
            await sender.send_events(
                headers, stream.events(pieces), stream.error_event, coalesce=bool(scenario.large_stream)
            )
