"""`llm-gateway keys …` beside a running gateway, provider-key rotation by file watch and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.auth.keys import hash_secret, new_secret
from tests.auth_setup import ADMIN_TOKEN
from tests.e2e.test_cli import REPO, ServedGateway, ServeFactory, run_cli, serve  # noqa: F401  (fixture)
from tests.emulator.server import Emulator

HI = [{"role": "user", "content": "hi"}]
CONFIG_KEY = new_secret()


def auth_config(**extra: Any) -> dict[str, Any]:
    return {
        "auth": {"required": True, "admin_token": ADMIN_TOKEN},
        "teams": {"ml": {"policy": {"models": {"allow": ["gpt-4o*"]}}}},
        "users": {"alice": {"team": "ml"}},
        **extra,
    }


def rewrite(config_path: Path, **sections: Any) -> None:
    """Merge `sections` into the gateway's config file (lists and scalars replace)."""
    raw = yaml.safe_load(config_path.read_text())
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name].update(value)
        else:
            raw[name] = value
    config_path.write_text(yaml.safe_dump(raw))


async def keys_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def works_within(client_key: str, base: str, seconds: float) -> float:
    """Seconds until a request with `client_key` succeeds (fails the test after `seconds`)."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=client_key, max_retries=0)
    start = time.monotonic()
    while True:
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            return time.monotonic() - start
        except openai.AuthenticationError:
            if time.monotonic() - start > seconds:
                raise
            await asyncio.sleep(0.05)


async def refused_within(client_key: str, base: str, seconds: float) -> float:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=client_key, max_retries=0)
    start = time.monotonic()
    while True:
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        except openai.AuthenticationError:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, "the key still works"
        await asyncio.sleep(0.05)


async def serve_with_key_file(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
    **sections: Any,
) -> tuple[ServedGateway, Path]:
    """A served gateway requiring keys, its OpenAI key in a file holding `sk-server-ONE`."""
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-server-ONE\n")
    providers = {"openai": {"base_url": emulator.base_url("openai"), "api_key_file": str(key_file)}}
    return await serve(providers=providers, **auth_config(), **sections), key_file


async def test_key_life_cycle_from_the_cli_beside_a_running_gateway(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
) -> None:
    gw, _ = await serve_with_key_file(serve, tmp_path, emulator, state={"path": str(tmp_path / "state")})
    config = str(gw.config_path)
    code, out, err = await keys_cli(
        "keys", "create", "-c", config, "--user", "alice", "--name", "ci", "--expires", "7d", "--json"
    )
    assert code == 0, err
    created = json.loads(out)
    key_id, secret = created["key"]["id"], created["secret"]
    assert created["key"]["team"] == "ml"
    # The CLI wrote the key file; the running gateway picks the key up within a second.
    assert await works_within(secret, gw.url("openai"), 1.5) < 1.5
    assert emulator.requests[-1].headers["Authorization"] == "Bearer sk-server-ONE"

    code, out, _ = await keys_cli("keys", "list", "-c", config)
    assert code == 0 and key_id in out and "alice" in out and secret not in out
    code, out, _ = await keys_cli("keys", "show", key_id, "-c", config, "--json")
    assert json.loads(out)["key"]["name"] == "ci"

    # Through the admin API (--url), with the token from the environment only.
    code, _, err = await keys_cli("keys", "rotate", key_id, "--url", gw.base)
    assert code == 1 and "LLM_GATEWAY_ADMIN_TOKEN" in err
    env = {"LLM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    code, out, err = await keys_cli("keys", "rotate", key_id, "--url", gw.base, "--json", env=env)
    assert code == 0, err
    rotated = json.loads(out)["secret"]
    await works_within(rotated, gw.url("openai"), 1.5)
    await refused_within(secret, gw.url("openai"), 1.5)
    code, _, err = await keys_cli(
        "keys", "show", key_id, "--url", gw.base, env={"LLM_GATEWAY_ADMIN_TOKEN": "wrong"}
    )
    assert code == 1 and "401" in err
    code, out, _ = await keys_cli("teams", "--url", gw.base, "--json", env=env)
    assert [t["name"] for t in json.loads(out)["teams"]] == ["ml"]

    code, out, err = await keys_cli("keys", "revoke", key_id, "-c", config)
    assert code == 0, err
    assert await refused_within(rotated, gw.url("openai"), 1.5) < 1.5
    code, _, err = await keys_cli("keys", "create", "-c", config, "--team", "nope")
    assert code == 1 and "unknown team 'nope'" in err

    await gw.stop()
    log = gw.log()
    for leaked in (secret, rotated, "sk-server-ONE", ADMIN_TOKEN):
        assert leaked not in log
    assert f"key rotated: id={key_id}" in log  # through the admin API: logged by the gateway


async def test_provider_key_rotation_by_file_and_config_reload_on_sighup(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    emulator: Emulator,
) -> None:
    gw, key_file = await serve_with_key_file(serve, tmp_path, emulator)
    rewrite(gw.config_path, keys=[{"id": "cfg", "team": "ml", "secret_hash": hash_secret(CONFIG_KEY)}])
    # Not yet: the config file changed, but nothing reloads it before SIGHUP.
    client = openai.AsyncOpenAI(base_url=gw.url("openai") + "/v1", api_key=CONFIG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    gw.process.send_signal(signal.SIGHUP)
    await works_within(CONFIG_KEY, gw.url("openai"), 5)
    assert emulator.requests[-1].headers["Authorization"] == "Bearer sk-server-ONE"

    # Rotating the provider key: replace the file (as a Kubernetes secret volume does).
    (tmp_path / "openai.key.new").write_text("sk-server-TWO\n")
    os.replace(tmp_path / "openai.key.new", key_file)
    deadline = time.monotonic() + 3
    while True:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        if emulator.requests[-1].headers["Authorization"] == "Bearer sk-server-TWO":
            break
        assert time.monotonic() < deadline, "the new provider key was not picked up"
        await asyncio.sleep(0.1)

    # An invalid config on SIGHUP changes nothing.
    gw.config_path.write_text(gw.config_path.read_text() + "\nauth: {passthrough: maybe}\n")
    gw.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert await gw.stop() == 0
    log = gw.log()
    assert "SIGHUP: reloaded auth" in log and "SIGHUP: config not reloaded" in log
    assert "sk-server-ONE" not in log and "sk-server-TWO" not in log and CONFIG_KEY not in log


async def test_keys_hash_for_config_keys() -> None:
    code, out, _ = await run_cli("keys", "hash", "--generate")
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert hash_secret(lines["secret"].strip()) == lines["secret_hash"].strip()
