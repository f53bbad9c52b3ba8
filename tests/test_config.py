"""Config: defaults with no file, ${ENV} interpolation, messages a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.keys import hash_secret
from gateway.config import ConfigError, load_config

HASH = hash_secret("lgw_example")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults() -> None:
    config = load_config()
    assert config.server.host == "127.0.0.1"
    assert set(config.providers) == {"openai", "anthropic", "gemini"}
    assert config.audit.dsn.startswith("chdb://")


def test_custom_provider_with_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_HOST", "10.1.2.3")
    config = load_config(
        write(
            tmp_path,
            """
providers:
  vllm:
    kind: openai
    base_url: http://${VLLM_HOST}:${VLLM_PORT:-8000}/
    timeouts: {connect_s: 2, idle_s: 30}
""",
        )
    )
    vllm = config.providers["vllm"]
    assert vllm.base_url == "http://10.1.2.3:8000" and vllm.kind == "openai"
    assert config.timeouts_for(vllm).connect_s == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  prot: 1\n", "server.prot: unknown key (did you mean 'port'?)"),
        ("server:\n  port: abc\n", "server.port: expected a number"),
        ("providers:\n  x:\n    kind: cohere\n    base_url: http://a\n", "providers.x.kind: must be one of"),
        ("providers:\n  x:\n    kind: openai\n", "providers.x.base_url: an http(s) URL is required"),
        ("audit:\n  dsn: mysql://x\n", "audit.dsn must start with chdb://"),
        ("audit:\n  dsn: ${NOPE_NOT_SET}\n", "environment variable ${NOPE_NOT_SET} is not set"),
        ("- a list\n", "the top level must be a mapping"),
        # auth, teams, users, keys
        ("auth:\n  required: true\n  passthrough: allow\n", "auth.passthrough: allow contradicts"),
        ("auth:\n  passthrough: maybe\n", "auth.passthrough must be allow or deny"),
        ("users:\n  bob: {team: nope}\n", "users.bob.team: unknown team 'nope' (none are declared)"),
        (
            "teams: {ml: {}}\nkeys:\n  - {id: k, team: ml, secret: lgw_x}\n",
            "keys[0].secret: store only the hash",
        ),
        (
            "teams: {ml: {}}\nkeys:\n  - {id: k, team: ml, secret_hash: abc}\n",
            "keys[0].secret_hash: must look like",
        ),
        (
            f"teams: {{ml: {{}}}}\nkeys:\n  - {{id: k, team: ops, secret_hash: {HASH}}}\n",
            "keys[0].team: unknown team 'ops'",
        ),
        (
            f"teams: {{ml: {{}}, ops: {{}}}}\nusers: {{bob: {{team: ops}}}}\n"
            f"keys:\n  - {{id: k, team: ml, user: bob, secret_hash: {HASH}}}\n",
            "keys[0]: user 'bob' belongs to team 'ops', not 'ml'",
        ),
        (
            f"teams: {{ml: {{}}}}\nkeys:\n  - {{id: k, team: ml, secret_hash: {HASH}}}\n"
            f"  - {{id: k, team: ml, secret_hash: {HASH}}}\n",
            "keys[1].id: duplicate key id 'k'",
        ),
        ("policy:\n  max_tokens_action: truncate\n", "max_tokens_action must be reject or clamp"),
        (
            "providers:\n  openai:\n    api_key: a\n    api_key_file: /b\n",
            "set api_key or api_key_file, not both",
        ),
    ],
)
def test_invalid_config_says_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)


def test_provider_keys_from_env_or_file_and_never_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_KEY_FOR_TEST", "sk-from-env-123")
    key_file = tmp_path / "anthropic.key"
    key_file.write_text("sk-ant-from-file-456\n")
    config = load_config(
        write(
            tmp_path,
            f"""
providers:
  openai: {{api_key: "${{OPENAI_KEY_FOR_TEST}}"}}
  anthropic: {{api_key_file: {key_file}}}
""",
        )
    )
    assert config.providers["openai"].api_key == "sk-from-env-123"
    assert config.providers["anthropic"].api_key_file == str(key_file)
    assert "sk-from-env-123" not in repr(config)


def test_the_readme_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Keys, teams and policy", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("LLM_GATEWAY_ADMIN_TOKEN", "OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_KEY"):
        monkeypatch.setenv(name, f"value-of-{name}")
    config = load_config(write(tmp_path, example))
    assert set(config.teams) == {"research", "support"} and config.users["bob"].team == "research"
    assert [k.id for k in config.keys] == ["support-bot", "nightly-embeddings"]
    assert config.auth.required and config.providers["azure"].auth_header == "api-key"
    assert config.teams["support"].policy.models.allow == ("claude-*-haiku*",)


def test_the_readme_guards_example_is_valid(tmp_path: Path) -> None:
    from gateway.auth.policy import PolicyChain
    from gateway.stages.scan.guard import Guard

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Guards: secrets, prompt injection and PII", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, example))
    guard = Guard(config.guards)
    everyone = guard.resolver(None)
    assert everyone.action("openai_api_key", "credential", "output") == "redact"
    assert everyone.action("instruction_override", "injection", "tool_definition") == "block"
    assert everyone.action("email_address", "pii", "user") == "off"
    research = PolicyChain((("team", "research", config.teams["research"].policy),))
    assert guard.resolver(research).action("instruction_override", "injection", "tool_result") == "log"
    (key,) = config.keys
    assert key.policy.guards is not None and key.policy.guards.bypass
