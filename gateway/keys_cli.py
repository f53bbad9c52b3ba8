"""`llm-gateway keys …`, `teams`, `users`: the admin API's operations from the command line.

By default the CLI works on the state store named in the config (the key file, or Redis) — a
running gateway sees the change within a second. With `--url` (or LLM_GATEWAY_URL) it calls a
gateway's admin API instead, with the admin token from LLM_GATEWAY_ADMIN_TOKEN (never an
argument: command lines are visible to every user of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gateway.auth.keys import hash_secret, new_secret
from gateway.auth.settings import ADMIN_TOKEN_ENV
from gateway.config import GatewayConfig

URL_ENV = "LLM_GATEWAY_URL"


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, show, rotate and revoke gateway keys")
    ops = keys.add_subparsers(dest="keys_command", required=True)
    create = ops.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--team", help="owning team (default: the user's team)")
    create.add_argument("--user", help="owning user (optional)")
    create.add_argument("--name", default="", help="a label, e.g. the agent or job")
    create.add_argument("--id", help="key id (default: generated)")
    create.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    create.add_argument("--expires", help="expiry: a duration (30d, 12h) or an ISO 8601 time")
    create.add_argument("--policy", help='policy JSON, e.g. \'{"models": {"allow": ["gpt-4o*"]}}\'')
    listing = ops.add_parser("list", help="all keys (no secrets)")
    listing.add_argument("--team", default="")
    listing.add_argument("--active", action="store_true", help="hide revoked keys")
    show = ops.add_parser("show", help="one key (no secret)")
    show.add_argument("key_id")
    rotate = ops.add_parser("rotate", help="a new secret for a key; prints it once")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", default="0s", help="how long the old secret keeps working (e.g. 1h)")
    revoke = ops.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    hashing = ops.add_parser("hash", help="the secret_hash of a secret read from stdin (for config keys)")
    hashing.add_argument("--generate", action="store_true", help="generate a new secret and print both")
    teams = sub.add_parser("teams", help="list the configured teams")
    users = sub.add_parser("users", help="list the configured users")
    for parser in (create, listing, show, rotate, revoke, teams, users):
        parser.add_argument("--config", "-c", help="YAML config file (state store, teams, users)")
        parser.add_argument("--url", default=os.environ.get(URL_ENV), help=f"gateway URL (or {URL_ENV})")
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, config: GatewayConfig | None) -> int:
    """Dispatch one keys/teams/users command; returns the exit code."""
    if args.command == "keys" and args.keys_command == "hash":
        return print_hash(args.generate)
    assert config is not None
    try:
        result = call_admin_api(args) if args.url else asyncio.run(call_store(args, config))
    except CommandError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(args, result)
    return 0


class CommandError(Exception):
    """A refused or failed command; the message is for the user."""


def print_hash(generate: bool) -> int:
    if generate:
        secret = new_secret()
        print(f"secret:      {secret}")
    else:
        secret = sys.stdin.readline().strip()
        if not secret:
            print("llm-gateway: give the secret on stdin (or use --generate)", file=sys.stderr)
            return 1
    print(f"secret_hash: {hash_secret(secret)}")
    return 0


def create_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {k: v for k in ("team", "user", "id") if (v := getattr(args, k))}
    if args.name:
        spec["name"] = args.name
    if args.tag:
        spec["tags"] = args.tag
    if args.expires:
        spec["expires_at"] = expiry(args.expires)
    if args.policy:
        try:
            spec["policy"] = json.loads(args.policy)
        except ValueError:
            raise CommandError("--policy must be a JSON object") from None
    return spec


def expiry(value: str) -> str:
    from gateway.admin_api import parse_duration
    from gateway.auth.registry import KeyRequestError

    try:
        return (dt.datetime.now(dt.UTC) + parse_duration(value)).isoformat()
    except KeyRequestError:
        return value  # an ISO time; the registry validates it


async def call_store(args: argparse.Namespace, config: GatewayConfig) -> dict[str, Any]:
    """Do the command on the state store directly (no gateway needed)."""
    from gateway.admin_api import issued_body, parse_duration, team_view, user_view
    from gateway.app import build_access
    from gateway.auth.registry import KeyRequestError

    access = build_access(config)
    registry = access.registry
    if not await registry.refresh():
        raise CommandError(f"the key store ({registry.store.description}) is unreachable")
    try:
        if args.command == "teams":
            return {"teams": [team_view(t, registry.list(team=t.name)) for t in registry.teams.values()]}
        if args.command == "users":
            return {"users": [user_view(u) for u in registry.users.values()]}
        command = args.keys_command
        if command == "create":
            return issued_body(await registry.create(create_spec(args)))
        if command == "list":
            return {"keys": [k.public() for k in registry.list(args.team, include_revoked=not args.active)]}
        if command == "show":
            return {"key": registry.get(args.key_id).public()}
        if command == "rotate":
            return issued_body(await registry.rotate(args.key_id, parse_duration(args.grace)))
        return {"key": (await registry.revoke(args.key_id)).public()}
    except KeyRequestError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await registry.close()


def call_admin_api(args: argparse.Namespace) -> dict[str, Any]:
    """Do the command through a gateway's admin API."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise CommandError(f"set {ADMIN_TOKEN_ENV} to the gateway's admin token to use --url")
    if args.command in ("teams", "users"):
        return admin_request(args.url, token, "GET", f"/admin/{args.command}")
    key = urllib.parse.quote(getattr(args, "key_id", "") or "", safe="")
    command = args.keys_command
    if command == "create":
        return admin_request(args.url, token, "POST", "/admin/keys", create_spec(args))
    if command == "list":
        query = urllib.parse.urlencode({"team": args.team, "include_revoked": str(not args.active).lower()})
        return admin_request(args.url, token, "GET", f"/admin/keys?{query}")
    if command == "show":
        return admin_request(args.url, token, "GET", f"/admin/keys/{key}")
    if command == "rotate":
        return admin_request(args.url, token, "POST", f"/admin/keys/{key}/rotate", {"grace": args.grace})
    return admin_request(args.url, token, "POST", f"/admin/keys/{key}/revoke")


def admin_request(
    url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    req = urllib.request.Request(
        url.rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise CommandError(f"{exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise CommandError(f"cannot reach {url}: {exc.reason}") from None


KEY_COLUMNS = ("id", "team", "user", "name", "tags", "expires_at", "revoked_at", "source")


def print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if "secret" in result:
        print(f"secret: {result['secret']}")
        print("        (shown only now: set it as the agent's API key, e.g. OPENAI_API_KEY)")
        print_detail(result["key"])
    elif "key" in result:
        print_detail(result["key"])
    elif "keys" in result:
        print_table(result["keys"], KEY_COLUMNS)
    elif "teams" in result:
        print_table(result["teams"], ("name", "keys", "description", "policy"))
    else:
        print_table(result["users"], ("name", "team", "email", "policy"))


def print_detail(item: dict[str, Any]) -> None:
    width = max(len(k) for k in item)
    for name, value in item.items():
        print(f"{name:<{width}}  {cell(value)}")


def print_table(items: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    rows = [[cell(item.get(c)) for c in columns] for item in items]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
