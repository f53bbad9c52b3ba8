"""Model prices and what a request costs: the shipped table, config overrides, name resolution.

Prices are USD per million tokens, held as Decimal so a cost is exact to the nano-dollar. Token
counts arrive normalised (gateway.audit.record.Usage): input includes cache reads and writes,
output includes reasoning; each part is billed at its own price here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.audit.record import Usage

MILLION = Decimal(1_000_000)
NANO = Decimal("0.000000001")
PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")

# Suffixes of dated or aliased snapshots, stripped one at a time until a family entry matches.
_SNAPSHOT = re.compile(
    r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest|-\d{3}|-preview(?:-\d{2}-\d{2,4})?|-exp(?:-\d{4})?)$"
)


@dataclass(frozen=True, slots=True)
class Prices:
    """One set of per-million prices; None falls back (cache → input, reasoning → output)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    above_input_tokens: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    base: Prices
    tiers: tuple[Tier, ...] = ()  # ascending thresholds

    def prices_for(self, input_tokens: int) -> Prices:
        chosen = self.base
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier.prices
        return chosen


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: resolutions are cached per table
class PriceTable:
    """Prices by provider kind (or configured provider name), then model."""

    version: str
    models: Mapping[str, Mapping[str, ModelPrice]] = field(default_factory=dict)

    def resolve(self, provider: str, kind: str, model: str) -> ModelPrice | None:
        """The price of `model` at a provider: its own entry, its kind's, or its snapshot family's."""
        name = normalize_model(model)
        if not name:
            return None
        return _resolve(self, provider, kind, name)

    def cost(self, provider: str, kind: str, model: str, usage: Usage) -> Decimal | None:
        """What `usage` cost in USD, or None when the model's price or the usage is unknown."""
        if usage.input_tokens is None and usage.output_tokens is None:
            return None
        price = self.resolve(provider, kind, model)
        if price is None:
            return None
        return bill(price, usage)

    def estimate(
        self, provider: str, kind: str, model: str, input_tokens: int, output_tokens: int
    ) -> Decimal | None:
        """An upper-bound-minded cost for a call not yet made (no cache discount assumed)."""
        return self.cost(provider, kind, model, Usage(input_tokens=input_tokens, output_tokens=output_tokens))


def bill(price: ModelPrice, usage: Usage) -> Decimal:
    total_in = usage.input_tokens or 0
    p = price.prices_for(total_in)
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    reasoning = usage.reasoning_tokens or 0
    output = usage.output_tokens or 0
    plain_in = max(total_in - cache_read - cache_write, 0)
    plain_out = max(output - reasoning, 0)
    cost = (
        plain_in * p.input
        + cache_read * (p.input if p.cache_read is None else p.cache_read)
        + cache_write * (p.input if p.cache_write is None else p.cache_write)
        + plain_out * p.output
        + reasoning * (p.output if p.reasoning is None else p.reasoning)
    )
    return (cost / MILLION).quantize(NANO)


def normalize_model(model: str) -> str:
    """`models/gemini-2.5-flash` → `gemini-2.5-flash`; lower case, no surrounding space."""
    name = model.strip().lower()
    if name.startswith("models/"):
        name = name[len("models/") :]
    return name


@lru_cache(maxsize=4096)
def _resolve(table: PriceTable, provider: str, kind: str, name: str) -> ModelPrice | None:
    scopes = (
        [table.models.get(provider, {}), table.models.get(kind, {})]
        if provider != kind
        else [table.models.get(kind, {})]
    )
    candidate = name
    while True:
        for scope in scopes:
            if candidate in scope:
                return scope[candidate]
        shorter = _SNAPSHOT.sub("", candidate)
        if shorter == candidate or not shorter:
            return None
        candidate = shorter


# --- loading -------------------------------------------------------------------------------------


class PricingError(ValueError):
    pass


def load_table(
    file: str = "", overrides: Mapping[str, Any] | None = None, *, shipped: bool = True
) -> PriceTable:
    """The shipped table (unless `shipped` is False), then `file`, then `overrides`, later wins.

    Each source is `{version?, models: {provider_or_kind: {model: {input, output, …}}}}`.
    """
    version = ""
    models: dict[str, dict[str, ModelPrice]] = {}
    sources: list[tuple[str, Any]] = []
    if shipped:
        text = resources.files("gateway.pricing").joinpath("prices.yaml").read_text()
        sources.append(("the shipped price table", yaml.safe_load(text)))
    if file:
        try:
            sources.append((file, yaml.safe_load(Path(file).read_text())))
        except (OSError, yaml.YAMLError) as exc:
            raise PricingError(f"pricing.file {file}: {exc}") from None
    if overrides:
        sources.append(("pricing", overrides))
    for where, data in sources:
        if not isinstance(data, dict):
            raise PricingError(f"{where}: expected a mapping with `models:`")
        version = str(data.get("version") or version)
        for scope, entries in (data.get("models") or {}).items():
            if not isinstance(entries, dict):
                raise PricingError(f"{where}: models.{scope}: expected a mapping of model -> prices")
            bucket = models.setdefault(str(scope), {})
            for model, spec in entries.items():
                name = normalize_model(str(model))
                bucket[name] = parse_model_price(name, spec, f"{where}: models.{scope}.{model}")
    if overrides:
        version = f"{version}+config" if version else "config"
    return PriceTable(version or "unversioned", models)


def parse_model_price(model: str, spec: Any, where: str) -> ModelPrice:
    if not isinstance(spec, dict):
        raise PricingError(f"{where}: expected {{input, output, …}} in USD per million tokens")
    base = _prices(spec, where, None)
    tiers = []
    for i, raw in enumerate(spec.get("tiers") or ()):
        if not isinstance(raw, dict) or not isinstance(raw.get("above_input_tokens"), int):
            raise PricingError(f"{where}.tiers[{i}]: needs above_input_tokens (an integer) and prices")
        tiers.append(Tier(raw["above_input_tokens"], _prices(raw, f"{where}.tiers[{i}]", base)))
    tiers.sort(key=lambda t: t.above_input_tokens)
    return ModelPrice(model, base, tuple(tiers))


def _prices(spec: Mapping[str, Any], where: str, base: Prices | None) -> Prices:
    unknown = set(spec) - {*PRICE_FIELDS, "tiers", "above_input_tokens"}
    if unknown:
        raise PricingError(f"{where}: unknown price field(s) {', '.join(sorted(unknown))}")
    values: dict[str, Decimal | None] = {}
    for name in PRICE_FIELDS:
        raw = spec.get(name)
        if raw is None:
            values[name] = getattr(base, name) if base is not None else None
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise PricingError(f"{where}.{name}: a number of USD per million tokens")
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            raise PricingError(f"{where}.{name}: not a number: {raw!r}") from None
        if value < 0 or not value.is_finite():
            raise PricingError(f"{where}.{name}: must be a non-negative number")
        values[name] = value
    if values["input"] is None or values["output"] is None:
        raise PricingError(f"{where}: input and output prices are required")
    return Prices(**values)  # type: ignore[arg-type]
