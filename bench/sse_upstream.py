"""A small OpenAI-shaped streaming upstream: N `chat.completion.chunk` events, then `data: [DONE]`.

Run as `python -m bench.sse_upstream --port P [--chunks N] [--delay-ms D]`. A request may override the
defaults with the headers `x-bench-chunks` and `x-bench-delay-ms`. The first event goes out with the
response headers, so a client's time to first byte is the time to the first event.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

from bench.payloads import MODEL

_PREFIX = '{"id":"chatcmpl-bench0002","object":"chat.completion.chunk","created":1700000000,'
_FINGERPRINT = f'"model":"{MODEL}-2024-07-18","system_fingerprint":"fp_bench",'


def chunk_event(delta: str, finish: str | None, with_usage_null: bool) -> bytes:
    finish_json = "null" if finish is None else json.dumps(finish)
    usage = ',"usage":null' if with_usage_null else ""
    return (
        f'data: {_PREFIX}{_FINGERPRINT}"choices":[{{"index":0,"delta":{delta},"logprobs":null,'
        f'"finish_reason":{finish_json}}}]{usage}}}\n\n'
    ).encode()


def usage_event(chunks: int) -> bytes:
    usage = {
        "prompt_tokens": 231,
        "completion_tokens": chunks,
        "total_tokens": 231 + chunks,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    usage_json = json.dumps(usage, separators=(",", ":"))
    return f'data: {_PREFIX}{_FINGERPRINT}"choices":[],"usage":{usage_json}}}\n\n'.encode()


class StreamSettings:
    def __init__(self, chunks: int, delay_ms: float) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings: StreamSettings = request.app["settings"]
    body = await request.json()
    chunks = int(request.headers.get("x-bench-chunks", settings.chunks))
    delay_s = float(request.headers.get("x-bench-delay-ms", settings.delay_ms)) / 1000
    if not body.get("stream"):
        raise web.HTTPBadRequest(text="this upstream only streams; nginx serves the non-streaming case")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(chunk_event('{"role":"assistant","content":""}', None, include_usage))
    for i in range(chunks):
        if delay_s:
            await asyncio.sleep(delay_s)
        await response.write(
            chunk_event(json.dumps({"content": f" token{i}"}, separators=(",", ":")), None, include_usage)
        )
    await response.write(chunk_event("{}", "stop", include_usage))
    if include_usage:
        await response.write(usage_event(chunks))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def build_app(chunks: int, delay_ms: float) -> web.Application:
    app = web.Application()
    app["settings"] = StreamSettings(chunks, delay_ms)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency on Linux
        pass
    web.run_app(
        build_app(args.chunks, args.delay_ms), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
