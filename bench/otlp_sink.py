"""`python -m bench.otlp_sink --port P`: an OTLP/HTTP endpoint that accepts and discards exports.

The telemetry benchmark points the gateway's exporters here, so exporting costs what it costs
against a real collector (serialisation, HTTP) without a collector to install.
"""

from __future__ import annotations

import argparse

from aiohttp import web

# An empty Export*ServiceResponse is zero protobuf bytes.
_EMPTY = b""


async def accept(request: web.Request) -> web.Response:
    await request.read()
    request.app["exports"] += 1
    return web.Response(body=_EMPTY, content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"exports": request.app["exports"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["exports"] = 0
    app.router.add_post("/v1/traces", accept)
    app.router.add_post("/v1/metrics", accept)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
