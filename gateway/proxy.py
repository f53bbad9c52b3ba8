"""The hot path: route, read, pre-flight, forward, relay and observe, finish (DESIGN.md §1)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from gateway.audit.record import Outcome
from gateway.auth.access import Caller, inject_credential, without_query_credential
from gateway.errors import ErrorCode, GatewayError
from gateway.exchange import Exchange
from gateway.observe import ResponseObserver, accept_encoding, decoder_for
from gateway.providers.base import ProviderAdapter, RequestView, StreamFilter
from gateway.runtime import GATEWAY, Gateway, Route
from gateway.stages.base import StageContext
from gateway.stages.scan.output import OutputBlocked

log = logging.getLogger("gateway.proxy")

# RFC 9110 §7.6.1 hop-by-hop headers, plus what aiohttp recomputes for each leg.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Connection",
        "Host",
        "Content-Length",
    )
)
REQUEST_ID_HEADER = "x-gateway-request-id"
COST_HEADER = "x-gateway-cost-usd"  # on non-streamed responses whose usage is priced
SMALL_BODY_BYTES = 256 * 1024  # complete bodies up to this size are relayed in one write
OUTPUT_BLOCKED = "guard_blocked"  # error_type of an exchange whose output a guard blocked


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one request under /{provider}/… — every outcome leaves exactly one audit record."""
    gw = request.app[GATEWAY]
    ex = gw.begin_exchange(request)
    route: Route | None = None
    try:
        route = gw.route(request.match_info["provider"])
        ex.provider, ex.provider_kind = route.config.name, route.config.kind
        caller = gw.access.identify(request.headers, request.query_string, route.config.name)
        ex.key_id, ex.user, ex.team = caller.key_id, caller.user, caller.team
        caller.raise_if_refused()
        reading = time.perf_counter()
        body = await read_body(request, gw.config.server.max_body_bytes)
        ex.client_wait += time.perf_counter() - reading
        ex.request_bytes, ex.request_sha256 = len(body), hashlib.sha256(body).hexdigest()
        ex.request_preview = body[: gw.content.capture_request_chars].decode("utf-8", "replace")
        query = without_query_credential(request.query_string) if caller.substitutes else request.query_string
        view = route.adapter.parse_request(request.method, "/" + request.match_info["path"], query, body)
        ex.view = view
        ctx = StageContext(
            view=view,
            client_address=ex.client_address,
            key_id=caller.key_id,
            user=caller.user,
            team=caller.team,
            provider=route.config.name,
            policy=caller.policy,
            request_id=ex.request_id,
        )
        try:
            result = await gw.pipeline.pre_flight(ctx)
        finally:
            ex.reservation, ex.sensitive = ctx.reservation, ctx.sensitive
            ex.flags.extend(ctx.flags)
        ex.response_guard = ctx.response_guard
        ex.findings.extend(result.findings)
        if result.body is not None:
            view.body = result.body
        return await forward_and_relay(gw, route, request, view, ex, caller)
    except GatewayError as err:
        ex.findings.extend(f for f in err.findings if f not in ex.findings)
        ex.fail(err)
        return error_response(route.adapter if route else gw.default_adapter, err, ex)
    except asyncio.CancelledError:
        ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
        raise
    except Exception as exc:
        log.exception("unexpected error serving %s", ex.request_id)
        internal = GatewayError(ErrorCode.INTERNAL, f"internal gateway error ({type(exc).__name__})")
        ex.fail(internal, error_type=type(exc).__name__)
        return error_response(route.adapter if route else gw.default_adapter, internal, ex)
    finally:
        gw.finish_exchange(ex)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body as received, or a 413 once it passes `limit` (without reading it all)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise GatewayError(
            ErrorCode.REQUEST_TOO_LARGE, f"request body of {declared} bytes exceeds the {limit}-byte limit"
        )
    if request.content.is_eof():  # all of it has arrived (a small body comes with the headers)
        body = request.content.read_nowait()
        if len(body) > limit:
            raise GatewayError(ErrorCode.REQUEST_TOO_LARGE, f"request body exceeds the {limit}-byte limit")
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise GatewayError(ErrorCode.REQUEST_TOO_LARGE, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def upstream_headers(incoming: MultiMapping[str], transformed: bool) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop ones; Accept-Encoding narrowed to what we can decode."""
    connection_tokens = {t.strip().lower() for v in incoming.getall("Connection", ()) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_tokens or lname == "accept-encoding":
            continue
        out.add(name, value)
    # A stream we rewrite must arrive uncompressed; otherwise pass on the client's choice if we can decode it.
    out["Accept-Encoding"] = accept_encoding(incoming.get("Accept-Encoding"), allow=not transformed)
    return out


def gateway_headers(headers: CIMultiDict[str], ex: Exchange) -> CIMultiDict[str]:
    """What the gateway adds to every response: its request id and, with tracing, `traceresponse`."""
    headers[REQUEST_ID_HEADER] = ex.request_id
    if ex.traceresponse:
        headers["traceresponse"] = ex.traceresponse
    return headers


def response_headers(upstream: aiohttp.ClientResponse, ex: Exchange, transformed: bool) -> CIMultiDict[str]:
    connection_tokens = {
        t.strip().lower() for v in upstream.headers.getall("Connection", []) for t in v.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lname = name.lower()
        if lname in connection_tokens or (
            lname in HOP_BY_HOP and not (lname == "content-length" and not transformed)
        ):
            continue
        out.add(name, value)
    return gateway_headers(out, ex)


async def forward_and_relay(
    gw: Gateway, route: Route, request: web.Request, view: RequestView, ex: Exchange, caller: Caller
) -> web.StreamResponse:
    """Send the request upstream and relay the response chunk by chunk as it arrives."""
    body, stream_filter = route.adapter.prepare_upstream(view)
    guard = ex.response_guard
    holds_output = guard is not None and (guard.holds_stream if view.stream else guard.holds_body)
    # What the gateway rewrites or checks before sending must arrive uncompressed.
    headers = upstream_headers(request.headers, stream_filter is not None or holds_output)
    if caller.provider_secret is not None:  # a gateway key: the provider's key replaces the caller's
        inject_credential(headers, route.credential_header(caller.provider_secret))
    timeouts = route.timeouts
    url = route.config.base_url + view.path + (f"?{view.query}" if view.query else "")
    ex.upstream_started = time.perf_counter()
    try:
        async with asyncio.timeout(timeouts.first_byte_s):
            with gw.telemetry.model_call(ex):
                upstream = await route.session.request(
                    view.method,
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                )
    except aiohttp.ConnectionTimeoutError as exc:
        raise GatewayError(
            ErrorCode.UPSTREAM_TIMEOUT, f"connecting to the {route.config.name} upstream timed out"
        ) from exc
    except TimeoutError as exc:
        raise GatewayError(
            ErrorCode.UPSTREAM_TIMEOUT,
            f"the {route.config.name} upstream sent no response within {timeouts.first_byte_s:g}s",
        ) from exc
    except aiohttp.ClientError as exc:
        raise GatewayError(
            ErrorCode.UPSTREAM_UNREACHABLE,
            f"the {route.config.name} upstream is unreachable ({type(exc).__name__})",
        ) from exc
    finally:  # connecting and waiting for the headers, answered or not, is the upstream's time
        ex.upstream_wait += time.perf_counter() - ex.upstream_started
    try:
        return await relay(gw, route, request, view, ex, upstream, stream_filter)
    finally:
        upstream.close()  # a no-op after a full read; aborts the upstream call otherwise


async def relay(
    gw: Gateway,
    route: Route,
    request: web.Request,
    view: RequestView,
    ex: Exchange,
    upstream: aiohttp.ClientResponse,
    stream_filter: StreamFilter | None,
) -> web.StreamResponse:
    """Decided at response-headers time: stream or not. Bytes go out as they arrive."""
    ex.first_byte = time.perf_counter()
    ex.status = upstream.status
    streaming = ex.streamed = upstream.content_type == "text/event-stream"
    if streaming:
        gw.telemetry.stream_opened(ex)
    else:
        stream_filter = None  # e.g. an upstream error body for a stream request: relay as-is
    guard = ex.response_guard = ex.response_guard if upstream.status < 400 else None  # errors carry no output
    sink = None
    if guard is not None:
        if streaming and guard.holds_stream:
            stream_filter = FilterChain.of(stream_filter, guard.stream())
        else:
            if streaming:
                guard.stream()  # watches a decoded copy of the stream (log mode)
            sink = guard.observe
    observer = ResponseObserver(
        route.adapter.response_parser(
            view, streaming, gw.content.capture_response_chars, gw.config.capture.parse_limit_bytes
        ),
        upstream.headers.get("Content-Encoding", ""),
        sink,
    )
    prefix = b""
    if not streaming:
        holding = guard is not None and guard.holds_body
        limit = max(SMALL_BODY_BYTES, gw.config.guards.max_output_bytes) if holding else SMALL_BODY_BYTES
        length = upstream.content_length
        if length is not None and length <= limit:
            return await relay_small_body(gw, route, request, ex, upstream, observer)
        if length is None or holding:  # most complete JSON bodies are small: one write for them too
            prefix, complete_body = await read_prefix(route, ex, upstream, limit)
            if complete_body:
                return await relay_small_body(gw, route, request, ex, upstream, observer, prefix)
        if holding and guard is not None:
            guard.too_large_to_hold()
    response = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=response_headers(upstream, ex, transformed=stream_filter is not None),
    )
    try:
        await response.prepare(request)
    except ConnectionResetError:  # the client left before the response started
        ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
        ex.summary = observer.summary()
        return response
    loop = asyncio.get_running_loop()
    idle = route.timeouts.idle_s
    complete = False
    clock = time.perf_counter
    waiting = clock()
    try:
        if prefix:  # already read (and timed) by read_prefix
            observer.feed(prefix)
            ex.relayed.update(prefix)
            await response.write(prefix)
        async with asyncio.timeout_at(loop.time() + idle) as idle_timer:
            async for chunk in upstream.content.iter_any():
                arrived = clock()
                ex.upstream_wait += arrived - waiting
                if ex.first_chunk is None:
                    ex.first_chunk = arrived
                observer.feed(chunk)
                if guard is not None and guard.stopped is not None:
                    raise guard.stopped  # a stream relayed as it comes: the match was just seen
                out = stream_filter.filter(chunk) if stream_filter is not None else chunk
                if out:
                    idle_timer.reschedule(None)  # a slow client is not an idle upstream
                    ex.relayed.update(out)
                    writing = clock()
                    await response.write(out)
                    ex.client_wait += clock() - writing
                idle_timer.reschedule(loop.time() + idle)
                waiting = clock()
        if stream_filter is not None and (rest := stream_filter.flush()):
            ex.relayed.update(rest)
            await response.write(rest)
        complete = True
    except OutputBlocked as blocked:
        await end_blocked_stream(route.adapter, request, response, ex, blocked)
    except TimeoutError:
        ex.upstream_wait += clock() - waiting  # the idle wait that timed out was the upstream's
        err = idle_timeout_error(route)
        await end_with_error(route.adapter, request, response, ex, streaming, err, "idle_timeout")
    except (aiohttp.ClientError, ConnectionResetError):
        if client_gone(request):
            ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
            return response
        err = broken_response_error(route)
        await end_with_error(route.adapter, request, response, ex, streaming, err, "upstream_disconnected")
    finally:
        ex.summary = observer.summary()
    if complete:
        settle_outcome(ex, upstream.status)
    if not client_gone(request):
        await response.write_eof()
    return response


class FilterChain:
    """Stream filters applied one after the other (e.g. usage stripping, then the output guard)."""

    __slots__ = ("_filters",)

    def __init__(self, filters: list[StreamFilter]) -> None:
        self._filters = filters

    @classmethod
    def of(cls, *filters: StreamFilter | None) -> StreamFilter:
        present = [f for f in filters if f is not None]
        return present[0] if len(present) == 1 else cls(present)

    def filter(self, chunk: bytes) -> bytes:
        for f in self._filters:
            chunk = f.filter(chunk)
        return chunk

    def flush(self) -> bytes:
        rest = b""
        for f in self._filters:
            rest = f.filter(rest) + f.flush() if rest else f.flush()
        return rest


async def read_prefix(
    route: Route, ex: Exchange, upstream: aiohttp.ClientResponse, limit: int
) -> tuple[bytes, bool]:
    """Up to `limit` bytes of a body of unknown length, and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    reading = time.perf_counter()
    try:
        async with asyncio.timeout(route.timeouts.idle_s) as idle_timer:
            while size <= limit:
                chunk = await upstream.content.readany()
                if not chunk:
                    return b"".join(chunks), True
                if ex.first_chunk is None:
                    ex.first_chunk = time.perf_counter()
                chunks.append(chunk)
                size += len(chunk)
                idle_timer.reschedule(asyncio.get_running_loop().time() + route.timeouts.idle_s)
    except TimeoutError:
        raise idle_timeout_error(route) from None
    except aiohttp.ClientError as exc:
        raise broken_response_error(route) from exc
    finally:
        ex.upstream_wait += time.perf_counter() - reading
    return b"".join(chunks), False


async def relay_small_body(
    gw: Gateway,
    route: Route,
    request: web.Request,
    ex: Exchange,
    upstream: aiohttp.ClientResponse,
    observer: ResponseObserver,
    body: bytes | None = None,
) -> web.StreamResponse:
    """A complete small body: one read (unless `body` was read already), one write with the headers.

    Same bytes as the streaming relay, but half the syscalls — the largest per-request cost
    measured — and the usage is known before the headers go out, so they can carry the cost.
    """
    if body is None:
        body = await read_small_body(route, ex, upstream)
    observer.feed(body)
    ex.summary = observer.summary()
    settle_outcome(ex, upstream.status)
    headers = response_headers(upstream, ex, transformed=True)  # aiohttp sets Content-Length
    guard = ex.response_guard
    if guard is not None and guard.holds_body:
        try:
            body = guard.check_body(decoded_body(body, headers, gw.config.guards.max_output_bytes))
        except OutputBlocked as blocked:
            gw.price(ex)  # the tokens were spent all the same
            ex.fail(blocked.error, error_type=OUTPUT_BLOCKED)
            return await send(request, ex, error_response(route.adapter, blocked.error, ex))
    ex.relayed.update(body)
    cost = gw.price(ex)
    if cost is not None:
        headers[COST_HEADER] = f"{cost:f}"
    response = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
    return await send(request, ex, response)


async def read_small_body(route: Route, ex: Exchange, upstream: aiohttp.ClientResponse) -> bytes:
    """A body of known, small length, within the idle timeout unless all of it is here already."""
    reading = time.perf_counter()
    try:
        if upstream.content.is_eof():  # it came with the headers: reading cannot wait, no timer needed
            return await upstream.read()
        async with asyncio.timeout(route.timeouts.idle_s):
            return await upstream.read()
    except TimeoutError:
        raise idle_timeout_error(route) from None
    except aiohttp.ClientError as exc:
        raise broken_response_error(route) from exc
    finally:
        ex.upstream_wait += time.perf_counter() - reading


async def send(request: web.Request, ex: Exchange, response: web.Response) -> web.Response:
    """Sent here, not after the handler returns: the audit record and telemetry come after the
    client has its answer."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
    return response


def decoded_body(body: bytes, headers: CIMultiDict[str], limit: int) -> bytes:
    """A complete body the gateway must read, uncompressed (and its Content-Encoding dropped).

    The gateway asked for identity; an upstream that compresses anyway is decoded here.
    """
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    decoded = b"".join(decoder_for(encoding).decode(body))
    if len(decoded) > limit:
        return body  # not held: the guard's JSON parse fails and the body goes out as it came
    del headers["Content-Encoding"]
    return decoded


async def end_blocked_stream(
    adapter: ProviderAdapter,
    request: web.Request,
    response: web.StreamResponse,
    ex: Exchange,
    blocked: OutputBlocked,
) -> None:
    """A guard blocked the output mid-stream: what was cleared goes out, then the provider's
    own error event, and the stream ends (the upstream call is cancelled)."""
    ex.fail(blocked.error, error_type=OUTPUT_BLOCKED)
    ex.status = response.status
    event = adapter.stream_error_event(blocked.error)
    try:
        for data in (blocked.released, event):
            if data:
                await response.write(data)
                ex.relayed.update(data)
    except ConnectionResetError:
        if client_gone(request):
            ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"


def settle_outcome(ex: Exchange, status: int) -> None:
    """A response relayed in full: ok, unless the status or the body itself reports an error.

    A 200 stream that the upstream ends with its own error event counts as an upstream error.
    """
    if status < 400 and not ex.summary.error_type:
        ex.outcome = Outcome.OK
        return
    ex.outcome = Outcome.UPSTREAM_ERROR
    ex.error_type = ex.summary.error_type or f"http_{status}"


def idle_timeout_error(route: Route) -> GatewayError:
    return GatewayError(
        ErrorCode.UPSTREAM_TIMEOUT,
        f"the {route.config.name} upstream sent nothing for {route.timeouts.idle_s:g}s mid-response",
    )


def broken_response_error(route: Route) -> GatewayError:
    return GatewayError(
        ErrorCode.UPSTREAM_UNREACHABLE, f"the {route.config.name} upstream broke off the response"
    )


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def end_with_error(
    adapter: ProviderAdapter,
    request: web.Request,
    response: web.StreamResponse,
    ex: Exchange,
    streaming: bool,
    err: GatewayError,
    error_type: str,
) -> None:
    """Headers are sent already: a stream ends with the provider's own error event, a body is cut."""
    ex.fail(err, error_type=error_type)
    ex.status = response.status  # what the client saw
    if not streaming:
        # Only a cut connection tells the client a body is incomplete: write_eof would end a
        # chunked body with its terminating chunk and make the truncated JSON look complete.
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return
    event = adapter.stream_error_event(err)
    try:
        await response.write(event)
        ex.relayed.update(event)
    except ConnectionResetError:
        if client_gone(request):
            ex.outcome, ex.error_type = Outcome.CLIENT_DISCONNECTED, "client_disconnected"


def error_response(adapter: ProviderAdapter, err: GatewayError, ex: Exchange) -> web.Response:
    """A provider-shaped error the SDKs turn into their usual exception classes."""
    body = adapter.render_error(err)
    ex.relayed.update(body)
    response = web.Response(status=err.status, body=body, content_type="application/json")
    if err.rate_limit is not None:
        response.headers.update(adapter.rate_limit_headers(*err.rate_limit))
    response.headers.update(err.headers)
    gateway_headers(response.headers, ex)
    if err.code is ErrorCode.REQUEST_TOO_LARGE:
        response.force_close()  # the unread rest of the body must not be taken as the next request
    return response
