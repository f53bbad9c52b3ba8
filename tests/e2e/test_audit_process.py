"""A gateway with its audit store in a child process (`audit.isolation: process`, the default):
SDK traffic audited and read back through the child, nothing lost when the child is killed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

from gateway.audit.process import ProcessStore
from tests.audit.support import wait_until
from tests.audit.test_process import alive
from tests.conftest import RunningGateway
from tests.e2e.test_spool import N, sdk_request


async def test_sdk_traffic_is_audited_through_the_store_process_even_when_it_is_killed(
    make_gateway: Callable[..., Any],
) -> None:
    gw: RunningGateway = await make_gateway(audit={"isolation": "process"})
    store = gw.writer._store
    assert isinstance(store, ProcessStore) and store.pid not in (None, os.getpid())
    first_child = store.pid
    assert first_child is not None

    first = await asyncio.gather(*(sdk_request(gw, i) for i in range(N)))
    rows = await gw.rows()  # flushed into the child, queried back through it
    assert sorted(r["request_id"] for r in rows) == sorted(first)
    assert {r["provider"] for r in rows} == {"openai", "anthropic", "gemini"}
    assert all(r["outcome"] == "ok" and r["status"] == 200 for r in rows)

    os.kill(first_child, signal.SIGKILL)
    second = await asyncio.gather(*(sdk_request(gw, i) for i in range(N, 2 * N)))
    # The next insert finds the child gone: the batch is spooled, a new child replays it.
    await gw.writer.flush()
    await wait_until(lambda: gw.writer.stats.spool_backlog == 0 and gw.writer.ready, within_s=60)
    rows = await gw.rows()
    assert sorted(r["request_id"] for r in rows) == sorted(first + second)  # each exactly once
    stats = gw.writer.stats
    assert stats.spooled > 0 and stats.dropped == 0
    second_child = store.pid
    assert second_child not in (None, first_child) and not alive(first_child)

    await gw.server.close()  # the app's cleanup closes the writer, which closes the child
    assert second_child is not None and not alive(second_child)
