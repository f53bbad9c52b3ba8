"""Which scan engine to build: the fast one where it is installed, else the reference engine.

All engines report exactly the same matches (tests/stages/test_scan_engines.py); they differ
in speed only (bench/scan_engines.py, README "Scanner performance"): on a 100 KB prompt with
secrets in it, Hyperscan ~1 ms, RE2 ~6.5 ms, Python's `re` ~15-19 ms.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterable
from typing import Literal

from gateway.stages.scan.detectors import Detector
from gateway.stages.scan.scanner import ScanEngine, Scanner

log = logging.getLogger(__name__)

EngineName = Literal["auto", "hyperscan", "re2", "re"]
ENGINE_NAMES: tuple[EngineName, ...] = ("auto", "hyperscan", "re2", "re")


def engine_available(name: EngineName) -> bool:
    """Whether `name` can be built here (its library is importable)."""
    module = {"hyperscan": "hyperscan", "re2": "re2"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def build_engine(detectors: Iterable[Detector], engine: EngineName = "auto") -> ScanEngine:
    """The scan engine `engine` over `detectors`.

    "auto" is Hyperscan when the `hyperscan` package is installed, else Python's `re` with a
    warning (no wheel for this platform); "hyperscan", "re2" and "re" are that engine or an
    error naming the missing package. Engines are immutable once built (Hyperscan's scratch
    space is per thread), so one built for the same rules is reused: compiling the Hyperscan
    database takes about a second.
    """
    if engine not in ENGINE_NAMES:
        raise ValueError(f"scan: unknown engine {engine!r}; known: {', '.join(ENGINE_NAMES)}")
    if engine == "auto":
        if engine_available("hyperscan"):
            engine = "hyperscan"
        else:
            log.warning("scan: hyperscan is not installed; using the slower Python re engine")
            engine = "re"
    if not engine_available(engine):
        raise ValueError(
            f"scan: engine {engine!r} needs the {_PACKAGES[engine]!r} package, which is not installed"
        )
    return _built(tuple(detectors), engine)


@functools.lru_cache(maxsize=16)
def _built(detectors: tuple[Detector, ...], engine: EngineName) -> ScanEngine:
    if engine == "hyperscan":
        from gateway.stages.scan.hyperscan_engine import HyperscanScanner

        return HyperscanScanner(detectors)
    if engine == "re2":
        from gateway.stages.scan.re2_engine import RE2Scanner

        return RE2Scanner(detectors)
    return Scanner(detectors)


_PACKAGES = {"hyperscan": "hyperscan", "re2": "google-re2"}
