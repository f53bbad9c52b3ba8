"""Config: defaults with no file, ${ENV} interpolation, messages a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


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
    ],
)
def test_invalid_config_says_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
