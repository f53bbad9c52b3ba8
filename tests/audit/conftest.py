"""Fixtures for the audit tests: a real chDB store in a temp dir, and a fault injector around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from tests.audit.support import Faults, FaultyStore


@pytest.fixture
def settings(tmp_path: Path) -> AuditSettings:
    """Embedded store and spool under tmp_path; intervals short so tests stay fast."""
    return AuditSettings(
        dsn=f"chdb://{tmp_path}/chdb",
        spool_dir=str(tmp_path / "spool"),
        batch_size=50,
        flush_interval_s=0.02,
        replay_interval_s=0.05,
        isolation="thread",  # the writer's semantics; tests/audit/test_process.py covers "process"
    )


@pytest.fixture
def store(settings: AuditSettings) -> Iterator[AuditStore]:
    """An open store; closed afterwards so the next test may open another chDB directory."""
    opened = AuditStore(settings)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def faulty_factory(faults: Faults) -> Callable[[AuditSettings], AuditStore]:
    return lambda settings: FaultyStore(settings, faults)
