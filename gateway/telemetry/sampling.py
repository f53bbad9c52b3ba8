"""Head sampling from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the SDK's built-in samplers).

Default `parentbased_always_on`: every request is traced unless the caller's `traceparent` says
its trace is not sampled. The ratio samplers use the SDK's rule (the low 64 bits of the trace id
below `ratio * 2**64`), so a trace sampled by an SDK-based service is sampled here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LOW_64 = (1 << 64) - 1
DEFAULT_SAMPLER = "parentbased_always_on"


@dataclass(frozen=True, slots=True)
class Sampler:
    """Decides at span start whether the span is recorded and exported.

    A span without a parent is sampled when the low 64 bits of its trace id are below
    `root_bound` (2**64: always, 0: never); with `parent_based`, a span with a parent follows
    the parent's sampled flag instead.
    """

    root_bound: int = 1 << 64
    parent_based: bool = True
    name: str = DEFAULT_SAMPLER

    @classmethod
    def of_ratio(cls, ratio: float, parent_based: bool, name: str) -> Sampler:
        return cls(round(ratio * (1 << 64)), parent_based, name)

    def sampled(self, parent_sampled: bool | None, trace_id: int) -> bool:
        """`parent_sampled` is None for a root span."""
        if self.parent_based and parent_sampled is not None:
            return parent_sampled
        return (trace_id & _LOW_64) < self.root_bound


def _ratio(env: Mapping[str, str]) -> float:
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio between 0 and 1; using 1.0", raw)
        return 1.0
    return ratio


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` names; unknown names fall back to the default with a warning."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    parent_based = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    if root == "always_on":
        return Sampler.of_ratio(1.0, parent_based, name)
    if root == "always_off":
        return Sampler.of_ratio(0.0, parent_based, name)
    if root == "traceidratio":
        return Sampler.of_ratio(_ratio(env), parent_based, name)
    log.warning("OTEL_TRACES_SAMPLER=%s is not supported; using %s", name, DEFAULT_SAMPLER)
    return Sampler()
