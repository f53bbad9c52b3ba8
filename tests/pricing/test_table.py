"""Price resolution (dated snapshots, families, overrides), exact costs, unknown models, estimates."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gateway.audit.record import Usage
from gateway.pricing.table import PricingError, load_table

TABLE = load_table()


@pytest.mark.parametrize(
    ("kind", "model", "family"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot with its own price
        ("openai", "gpt-5-chat-latest", "gpt-5-chat"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic", "claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("gemini", "models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("gemini", "gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini", "gemini-3-pro-preview", "gemini-3-pro"),
    ],
)
def test_dated_and_aliased_names_resolve_to_their_family(kind: str, model: str, family: str) -> None:
    price = TABLE.resolve(kind, kind, model)
    assert price is not None and price.model == family


@pytest.mark.parametrize(
    ("kind", "model"),
    [("openai", "gpt-4o-mini-tts"), ("openai", "my-finetune"), ("anthropic", "gpt-4o"), ("gemini", "")],
)
def test_unknown_models_have_no_price(kind: str, model: str) -> None:
    assert TABLE.resolve(kind, kind, model) is None
    assert TABLE.cost(kind, kind, model, Usage(input_tokens=10, output_tokens=10)) is None


def test_cost_is_exact_and_bills_each_token_kind_at_its_own_price() -> None:
    # claude-sonnet-4-5: input 3, output 15, cache write 3.75, cache read 0.30 per million.
    usage = Usage(
        input_tokens=1_000 + 20_000 + 4_000,
        output_tokens=500,
        cache_read_tokens=20_000,
        cache_write_tokens=4_000,
    )
    cost = TABLE.cost("anthropic", "anthropic", "claude-sonnet-4-5-20250929", usage)
    expected = (
        Decimal(1_000) * 3 + Decimal(20_000) * Decimal("0.30") + Decimal(4_000) * Decimal("3.75") + 500 * 15
    ) / 1_000_000
    assert cost == expected == Decimal("0.0315")


def test_openai_cached_input_is_discounted_and_reasoning_is_output() -> None:
    # gpt-5-mini: input 0.25, cache read 0.025, output 2 (reasoning billed as output).
    usage = Usage(input_tokens=10_000, output_tokens=3_000, cache_read_tokens=8_000, reasoning_tokens=2_000)
    cost = TABLE.cost("openai", "openai", "gpt-5-mini-2025-08-07", usage)
    assert (
        cost == (Decimal(2_000) * Decimal("0.25") + Decimal(8_000) * Decimal("0.025") + 3_000 * 2) / 1_000_000
    )


def test_long_context_tier_applies_above_its_threshold() -> None:
    small = TABLE.cost("gemini", "gemini", "gemini-2.5-pro", Usage(input_tokens=200_000, output_tokens=1_000))
    large = TABLE.cost("gemini", "gemini", "gemini-2.5-pro", Usage(input_tokens=200_001, output_tokens=1_000))
    assert small == (Decimal(200_000) * Decimal("1.25") + 1_000 * 10) / 1_000_000
    assert large == (Decimal(200_001) * Decimal("2.50") + 1_000 * 15) / 1_000_000


def test_no_usage_is_unknown_not_zero() -> None:
    assert TABLE.cost("openai", "openai", "gpt-4o", Usage()) is None
    assert TABLE.cost("openai", "openai", "text-embedding-3-small", Usage(input_tokens=1_000)) == Decimal(
        "0.00002"
    )


def test_config_overrides_custom_models_and_per_provider_prices(tmp_path: Path) -> None:
    extra = tmp_path / "prices.yaml"
    extra.write_text("version: acme-7\nmodels:\n  openai:\n    gpt-4o: {input: 2, output: 8}\n")
    table = load_table(str(extra), {"models": {"vllm": {"llama-3.1-70b": {"input": 0.5, "output": 0.5}}}})
    assert table.version == "acme-7+config"
    assert table.cost("openai", "openai", "gpt-4o", Usage(input_tokens=1_000_000)) == Decimal(2)
    # a custom provider's own entry, and the kind's table behind it
    assert table.cost("vllm", "openai", "llama-3.1-70b", Usage(output_tokens=2_000_000)) == Decimal(1)
    assert table.cost("vllm", "openai", "gpt-4o-mini", Usage(input_tokens=1_000_000)) == Decimal("0.15")
    assert table.cost("openai", "openai", "llama-3.1-70b", Usage(input_tokens=1)) is None


def test_estimate_uses_the_price_without_cache_discounts() -> None:
    assert TABLE.estimate("openai", "openai", "gpt-4o", 1_000, 1_000) == Decimal("0.0125")
    assert TABLE.estimate("openai", "openai", "nope", 1_000, 1_000) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"models": {"openai": {"x": {"input": 1}}}}, "input and output prices are required"),
        ({"models": {"openai": {"x": {"input": -1, "output": 1}}}}, "must be a non-negative number"),
        (
            {"models": {"openai": {"x": {"input": 1, "output": 1, "cached": 1}}}},
            "unknown price field(s) cached",
        ),
        ({"models": {"openai": {"x": {"input": "abc", "output": 1}}}}, "not a number"),
        (
            {"models": {"openai": {"x": {"input": 1, "output": 1, "tiers": [{"input": 2}]}}}},
            "above_input_tokens",
        ),
    ],
)
def test_invalid_prices_are_refused_with_the_place(spec: dict, message: str) -> None:
    with pytest.raises(PricingError, match=r"models\.openai\.x") as info:
        load_table("", spec)
    assert message in str(info.value)


def test_the_shipped_table_is_versioned_and_complete() -> None:
    assert TABLE.version == "2026-11-01"
    for kind, models in TABLE.models.items():
        assert kind in ("openai", "anthropic", "gemini") and len(models) >= 7
        for price in models.values():
            assert price.base.input >= 0 and price.base.output >= 0
