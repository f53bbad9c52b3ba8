"""`llm-gateway guards rules|check`: what the guards look for, and what they would do with a text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.config import GatewayConfig
from gateway.providers.base import REQUEST_LOCATIONS, RESPONSE_LOCATIONS
from gateway.stages.scan.detectors import ALL_DETECTORS
from gateway.stages.scan.guard import Guard


def add_parsers(sub: Any) -> None:
    guards = sub.add_parser("guards", help="the guards' rules, and what they make of a text").add_subparsers(
        dest="guards_command", required=True
    )
    rules = guards.add_parser("rules", help="every detector rule and whether it runs")
    rules.add_argument("--json", action="store_true")
    rules.add_argument("--config", "-c", help="YAML config file (guards section)")
    check = guards.add_parser("check", help="scan a text as the gateway would (tune rules and allowlists)")
    check.add_argument("file", nargs="?", default="-", help="a file, or - for standard input")
    check.add_argument(
        "--location", default="user", choices=[*REQUEST_LOCATIONS, *RESPONSE_LOCATIONS], help="default user"
    )
    check.add_argument("--json", action="store_true")
    check.add_argument("--config", "-c", help="YAML config file (guards section)")


def run(args: argparse.Namespace, config: GatewayConfig) -> int:
    if args.guards_command == "rules":
        return print_rules(config, args.json)
    return check_text(config, args.file, args.location, args.json)


def print_rules(config: GatewayConfig, as_json: bool) -> int:
    enabled = config.guards.enabled_rules() if config.guards.enabled else frozenset()
    rows: list[dict[str, Any]] = [
        {
            "rule": d.rule,
            "category": str(d.category),
            "severity": str(d.severity),
            "runs": d.rule in enabled,
            "description": d.description,
        }
        for d in ALL_DETECTORS
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["rule"]) for r in rows)
    for r in rows:
        runs = "on " if r["runs"] else "off"
        print(f"{r['rule']:<{width}}  {r['category']:<10} {r['severity']:<6} {runs}  {r['description']}")
    return 0


def check_text(config: GatewayConfig, path: str, location: str, as_json: bool) -> int:
    """Findings in a text with the configured rules, allowlists and (global) actions.

    Exit status 1 when something would be blocked, so it can gate a file in a script.
    """
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8", errors="replace") as source:
            text = source.read()
    guard = Guard(config.guards)
    hits = guard.hits(text, location, guard.resolver(None), cache=False)
    found = [
        {
            "rule": h.rule,
            "category": h.category,
            "severity": h.severity,
            "action": str(h.action),
            "start": h.start,
            "end": h.end,
            "line": text.count("\n", 0, h.start) + 1,
            "preview": _masked(text[h.start : h.end]),
        }
        for h in hits
    ]
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        for f in found:
            where = f"line {f['line']}: {f['rule']} ({f['category']}, {f['severity']})"
            print(f"{where} -> {f['action']}  {f['preview']}")
        if not found:
            print("no findings")
    return 1 if any(h.action == "block" for h in hits) else 0


def _masked(value: str) -> str:
    """Enough of a match to recognise it, never the whole secret."""
    if len(value) <= 8:
        return "*" * len(value)
    return f"{value[:4]}…{value[-2:]} ({len(value)} chars)"
