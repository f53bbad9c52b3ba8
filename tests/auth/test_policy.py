"""How key, user, team and global policies combine (gateway/auth/policy.py)."""

from __future__ import annotations

import pytest

from gateway.auth.policy import EMPTY_POLICY, Patterns, Policy, PolicyChain


def chain(
    key: Policy = EMPTY_POLICY,
    user: Policy = EMPTY_POLICY,
    team: Policy = EMPTY_POLICY,
    glob: Policy = EMPTY_POLICY,
) -> PolicyChain:
    return PolicyChain((("key", "k", key), ("user", "u", user), ("team", "t", team), ("global", "", glob)))


def models(allow: tuple[str, ...] | None = None, deny: tuple[str, ...] = ()) -> Policy:
    return Policy(models=Patterns(allow, deny))


def denied(
    c: PolicyChain, model: str, provider: str = "openai", operation: str = "chat.completions"
) -> str | None:
    d = c.check_access(provider, model, operation, "127.0.0.1", "chat")
    return d.rule if d else None


def test_no_policy_allows_everything() -> None:
    assert denied(chain(), "anything") is None


def test_most_specific_allow_list_wins() -> None:
    c = chain(key=models(("gpt-4o*",)), team=models(("claude-*",)))
    assert denied(c, "gpt-4o-mini") is None
    assert denied(c, "claude-sonnet-4-5") == "policy.key.models"


def test_a_less_specific_allow_list_applies_when_the_more_specific_levels_are_silent() -> None:
    c = chain(team=models(("claude-*-haiku*",)))
    assert denied(c, "claude-3-5-haiku-latest") is None
    assert denied(c, "claude-opus-4-1") == "policy.team.models"


@pytest.mark.parametrize("level", ["key", "user", "team", "global"])
def test_deny_anywhere_wins_over_allow_anywhere(level: str) -> None:
    deny = models(deny=("*-preview*",))
    allow_all = models(("*",))
    c = chain(**{"key": allow_all, **({"glob" if level == "global" else level: deny})})  # type: ignore[arg-type]
    assert denied(c, "gemini-2.5-pro-preview-05") == f"policy.{level}.models.deny"
    assert denied(c, "gemini-2.5-pro") is None


def test_deny_wins_within_one_level() -> None:
    c = chain(team=models(("gpt-*",), ("gpt-4.5*",)))
    assert denied(c, "gpt-4.5-preview") == "policy.team.models.deny"
    assert denied(c, "gpt-4o") is None


def test_globs_are_case_sensitive_and_whole_name() -> None:
    c = chain(team=models(("claude-*-haiku*",)))
    assert denied(c, "CLAUDE-3-HAIKU") == "policy.team.models"
    assert denied(c, "x-claude-3-haiku") == "policy.team.models"
    assert denied(c, "claude-3-5-haiku-20241022") is None


def test_an_empty_allow_list_allows_nothing() -> None:
    assert denied(chain(key=models(())), "gpt-4o") == "policy.key.models"


def test_endpoints_match_operation_or_genai_operation() -> None:
    c = chain(key=Policy(endpoints=Patterns(("embeddings",))))
    assert c.check_access("gemini", "m", "batch_embed_contents", "", "embeddings") is None
    denial = c.check_access("openai", "gpt-4o", "chat.completions", "", "chat")
    assert denial is not None and denial.rule == "policy.key.endpoints"


def test_provider_patterns() -> None:
    c = chain(glob=Policy(providers=Patterns(deny=("vllm*",))))
    assert denied(c, "m", provider="vllm-internal") == "policy.global.providers.deny"
    assert denied(c, "m", provider="openai") is None


def test_models_are_not_checked_for_endpoints_without_a_model() -> None:
    c = chain(team=models(("claude-*",)))
    assert c.check_access("openai", "", "models.list", "127.0.0.1") is None


def test_streaming_most_specific_setting_wins() -> None:
    assert chain(team=Policy(streaming=False)).allows_streaming() is not None
    assert chain(key=Policy(streaming=True), team=Policy(streaming=False)).allows_streaming() is None
    assert chain().allows_streaming() is None


def test_output_cap_limit_and_action_resolve_separately() -> None:
    cap = chain(key=Policy(max_output_tokens=100), glob=Policy(max_tokens_action="clamp")).output_cap()
    assert cap is not None and (cap.limit, cap.action, cap.rule) == (
        100,
        "clamp",
        "policy.key.max_output_tokens",
    )
    default = chain(team=Policy(max_output_tokens=5)).output_cap()
    assert default is not None and default.action == "reject"
    assert chain().output_cap() is None


@pytest.mark.parametrize(
    ("allowed", "address", "ok"),
    [
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "192.168.1.1", False),
        (("10.0.0.0/8",), "::ffff:10.1.2.3", True),  # IPv4-mapped on a dual-stack socket
        (("2001:db8::/32",), "2001:db8::1", True),
        (("127.0.0.1",), "", False),
        (("127.0.0.1",), "not-an-ip", False),
    ],
)
def test_source_addresses(allowed: tuple[str, ...], address: str, ok: bool) -> None:
    c = chain(key=Policy(source_addresses=allowed))
    denial = c.check_access("openai", "m", "x", address)
    assert (denial is None) is ok


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="reject or clamp"):
        Policy(max_tokens_action="trim")
    with pytest.raises(ValueError, match="not an IP address"):
        Policy(source_addresses=("10.0.0.0/33",))
    with pytest.raises(ValueError, match="at least 1"):
        Policy(max_output_tokens=0)
