"""The persist worker yields to the event loop while it applies a large backlog (issue 7): one
synchronous pass over thousands of entries held heartbeats and every other task for as long."""

from __future__ import annotations

import asyncio

from test_driver_random import THREE, NullTransport, _commands

from raftstate.node.driver import APPLY_YIELD_EVERY, DriverSettings, RaftDriver
from raftstate.node.storage.store import MemoryStorage
from raftstate.raft import AppendEntries

BACKLOG = 3 * APPLY_YIELD_EVERY + 7


async def _applied_seen_by_another_task() -> tuple[RaftDriver, set[int]]:
    settings = DriverSettings(tick_ms=60_000)  # no ticks: no elections
    d = RaftDriver(
        "n2", bootstrap=THREE, storage=MemoryStorage(), transport=NullTransport(), settings=settings
    )
    await d.start()
    seen: set[int] = set()
    try:
        # One message: BACKLOG entries, all committed, so one Ready hands them all out to apply.
        d.step(AppendEntries(1, "n1", "n2", 0, 0, _commands(1, BACKLOG), BACKLOG))
        for _ in range(100_000):  # another task on the loop, watching the apply progress
            seen.add(d.sm.applied_index)
            if d.sm.applied_index >= BACKLOG or d.fatal_error is not None:
                break
            await asyncio.sleep(0)
    finally:
        await d.stop()
    return d, seen


def test_a_large_backlog_is_applied_in_order_with_the_loop_running_in_between() -> None:
    d, seen = asyncio.run(_applied_seen_by_another_task())
    assert d.fatal_error is None
    assert d.sm.applied_index == BACKLOG and d.sm.get(f"k{BACKLOG}") is not None
    # The other task ran while the backlog was being applied: it saw states part-way through,
    # each after a whole chunk (the old code applied all entries in one pass: only 0 and BACKLOG).
    partial = sorted(i for i in seen if 0 < i < BACKLOG)
    assert partial, f"the loop never ran while {BACKLOG} entries were applied (saw {sorted(seen)})"
    assert all(i % APPLY_YIELD_EVERY == 0 for i in partial), partial
