"""`llm-gateway`: serve, and read the audit log (through the running gateway when it owns the store)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import guards_cli, keys_cli
from gateway.auth.settings import ADMIN_TOKEN_ENV
from gateway.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description="Transparent, audited LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", help="YAML config file (default: embedded defaults)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8787)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    audit = sub.add_parser("audit", help="read the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    tail = audit.add_parser("tail", help="the most recent exchanges")
    tail.add_argument("-n", "--limit", type=int, default=20)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--config", "-c")
    show = audit.add_parser("show", help="one exchange in full")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--config", "-c")

    keys_cli.add_parsers(sub)
    guards_cli.add_parsers(sub)

    spend = sub.add_parser("spend", help="spend, requests and tokens from the audit log")
    spend.add_argument("--by", default="team", choices=["team", "user", "key", "model", "provider"])
    spend.add_argument("--since", default="7d", help="a duration ago (7d, 24h, 30m) or an ISO date")
    for name in ("team", "user", "key", "provider", "model"):
        spend.add_argument(f"--{name}", help=f"only this {name}")
    spend.add_argument("--json", action="store_true", help="the report as JSON")
    spend.add_argument("--config", "-c", help="YAML config file (where the audit store is)")
    spend.add_argument(
        "--url", default=os.environ.get(keys_cli.URL_ENV), help="a gateway's admin API (or LLM_GATEWAY_URL)"
    )

    args = parser.parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        if args.command == "serve":
            overrides = {f"server.{k}": v for k in ("host", "port") if (v := getattr(args, k)) is not None}
            if args.log_level:
                overrides["log_level"] = args.log_level
        config = load_config(getattr(args, "config", None), overrides)
    except ConfigError as exc:
        print(f"llm-gateway: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve_forever(config, args.config, overrides)
    if args.command in ("keys", "teams", "users"):
        return keys_cli.run(args, config)
    if args.command == "spend":
        return spend_command(args, config)
    if args.command == "guards":
        return guards_cli.run(args, config)
    if args.audit_command == "tail":
        return print_rows(audit_request(config, limit=args.limit), args.json)
    row = audit_request(config, request_id=args.request_id)
    if not row:
        print(f"no exchange with request id {args.request_id}", file=sys.stderr)
        return 1
    return print_rows(row, args.json, detail=True)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )


def serve_forever(
    config: GatewayConfig, config_path: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    configure_logging(config.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass
    # Measured in bench/: the default 5 ms GIL switch interval lets the audit thread delay
    # the event loop, and full collections of the long-lived startup heap cause p99 spikes.
    sys.setswitchinterval(0.0005)
    asyncio.run(_serve(config, config_path, overrides or {}))
    return 0


async def _serve(config: GatewayConfig, config_path: str | None, overrides: dict[str, Any]) -> None:
    from gateway.admin import INTERNAL_TOKEN, RUNTIME_FILE, write_runtime_file
    from gateway.app import build_app

    app = build_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=config.server.handler_cancellation,
        access_log=None,  # the gateway logs each exchange itself, without query strings
        shutdown_timeout=config.server.shutdown_grace_s,
    )
    await runner.setup()
    gc.collect()
    gc.freeze()  # startup objects (chDB client, modules) never need scanning again
    site = web.TCPSite(
        runner, config.server.host, config.server.port, shutdown_timeout=config.server.shutdown_grace_s
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, app, config_path, overrides)
    state_dir = Path(config.server.state_dir)
    write_runtime_file(
        state_dir, f"http://{_url_host(config.server.host)}:{config.server.port}", app[INTERNAL_TOKEN]
    )
    log.info(
        "llm-gateway listening on http://%s:%d (audit: %s)",
        config.server.host,
        config.server.port,
        config.audit.redacted_dsn(),
    )
    try:
        await stop.wait()
        log.info(
            "shutting down: draining in-flight requests (up to %gs), then flushing the audit log",
            config.server.shutdown_grace_s,
        )
    finally:
        await runner.cleanup()
        (state_dir / RUNTIME_FILE).unlink(missing_ok=True)
        log.info("stopped")


def reload_config(app: web.Application, config_path: str | None, overrides: dict[str, Any]) -> None:
    """SIGHUP: re-read the config file and apply its auth parts — keys, teams, users, policies,
    provider keys, admin token. Other sections need a restart; an invalid file changes nothing."""
    from gateway.runtime import GATEWAY

    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded, it is invalid: %s", exc)
        return
    gateway = app[GATEWAY]
    gateway.access.configure(config)
    unchanged = [
        name
        for name in ("server", "timeouts", "audit", "capture", "guards", "telemetry", "state")
        if getattr(config, name) != getattr(gateway.config, name)
    ]
    if {n: (p.kind, p.base_url) for n, p in config.providers.items()} != {
        n: (p.kind, p.base_url) for n, p in gateway.config.providers.items()
    }:
        unchanged.append("providers (routes)")
    log.info(
        "SIGHUP: reloaded auth, policy, teams (%d), users (%d), config keys (%d) and provider keys%s",
        len(config.teams),
        len(config.users),
        len(config.keys),
        f"; changes to {', '.join(unchanged)} need a restart" if unchanged else "",
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def audit_request(config: GatewayConfig, *, limit: int = 20, request_id: str | None = None) -> Any:
    """Tail (no request_id) or show one exchange: ask the running gateway, since chDB allows one
    process per directory; else open the store directly."""
    from gateway.admin import read_runtime_file

    what = f"tail?limit={limit}" if request_id is None else f"show/{urllib.parse.quote(request_id, safe='')}"
    runtime = read_runtime_file(Path(config.server.state_dir))
    if runtime is not None and _alive(int(runtime.get("pid", 0))):
        req = urllib.request.Request(
            f"{runtime['url']}/_gateway/audit/{what}", headers={"Authorization": f"Bearer {runtime['token']}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        except urllib.error.URLError:
            pass  # not answering: fall back to the store itself
    return _query_store(config, limit, request_id)


def spend_command(args: argparse.Namespace, config: GatewayConfig) -> int:
    """The spend report: through --url's admin API, the local gateway, or the store itself."""
    from gateway.admin import read_runtime_file
    from gateway.spend import SpendRequestError, report_body, spend_sql

    filters = {
        ("key_id" if name == "key" else name): value
        for name in ("team", "user", "key", "provider", "model")
        if (value := getattr(args, name))
    }
    query = urllib.parse.urlencode({"by": args.by, "since": args.since, **filters})
    try:
        spend_sql(config.audit, args.by, args.since, filters)  # validate before asking anyone
        if args.url:
            token = os.environ.get(ADMIN_TOKEN_ENV, "")
            if not token:
                raise keys_cli.CommandError(
                    f"set {ADMIN_TOKEN_ENV} to the gateway's admin token to use --url"
                )
            report = keys_cli.admin_request(args.url, token, "GET", f"/admin/spend?{query}")
        else:
            runtime = read_runtime_file(Path(config.server.state_dir))
            if runtime is not None and _alive(int(runtime.get("pid", 0))):
                report = keys_cli.admin_request(
                    runtime["url"], runtime["token"], "GET", f"/_gateway/spend?{query}"
                )
            else:
                from gateway.audit.store import AuditStore

                store = AuditStore(config.audit)
                store.open()
                try:
                    sql, parameters = spend_sql(config.audit, args.by, args.since, filters)
                    report = report_body(args.by, args.since, store.query(sql, parameters))
                finally:
                    store.close()
    except (SpendRequestError, keys_cli.CommandError) as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    columns = (args.by, "requests", "input_tokens", "output_tokens", "cost_usd", "unpriced_requests")
    table = [[_cell(row.get(c)) for c in columns] for row in report["rows"]]
    table.append(["total", "", "", "", report["total_usd"], ""])
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    print(f"spend by {args.by} since {report['since']}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _query_store(config: GatewayConfig, limit: int, request_id: str | None) -> Any:
    """No gateway running: open the store ourselves (read-only queries)."""
    from gateway.audit import queries
    from gateway.audit.store import AuditStore

    store = AuditStore(config.audit)
    store.open()
    try:
        if request_id is None:
            return [r.to_row() for r in queries.tail(store.query, config.audit, limit)]
        record = queries.show(store.query, config.audit, request_id)
        return None if record is None else record.to_row()
    finally:
        store.close()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


TAIL_COLUMNS = (
    "ts",
    "request_id",
    "provider",
    "operation",
    "requested_model",
    "status",
    "outcome",
    "duration_ms",
    "input_tokens",
    "output_tokens",
)


def print_rows(rows: Any, as_json: bool, detail: bool = False) -> int:
    if as_json:
        for row in rows if isinstance(rows, list) else [rows]:
            print(json.dumps(row, default=str))
        return 0
    if detail:
        width = max(len(k) for k in rows)
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
        return 0
    table = [[_cell(row.get(c)) for c in TAIL_COLUMNS] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(TAIL_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(TAIL_COLUMNS, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)[:40]


if __name__ == "__main__":
    sys.exit(main())
