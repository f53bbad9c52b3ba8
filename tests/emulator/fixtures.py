"""Pytest fixtures for the emulator.

Register them for the whole suite with ``pytest_plugins = ["tests.emulator.fixtures"]`` in the
root tests/conftest.py; tests/emulator/conftest.py already imports them for its own tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.emulator.server import Emulator


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A started emulator, stopped after the test."""
    emu = Emulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
