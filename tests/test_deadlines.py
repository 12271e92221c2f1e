"""node/runtime/deadlines.py: one loop timer times out many futures — each at its own deadline, never one
that completed, and it re-arms for the rest."""

from __future__ import annotations

import asyncio

import pytest

from raftstate.node.runtime.deadlines import Deadlines


async def test_each_future_times_out_at_its_own_deadline_and_done_ones_are_untouched() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    late, early, done = loop.create_future(), loop.create_future(), loop.create_future()
    d.add(late, 0.2, lambda: TimeoutError("late"))
    d.add(early, 0.05, lambda: TimeoutError("early"))  # earlier than the armed timer: re-armed
    d.add(done, 0.05, lambda: TimeoutError("done"))
    done.set_result(1)
    t0 = loop.time()
    with pytest.raises(TimeoutError, match="early"):
        await early
    assert 0.04 <= loop.time() - t0 < 0.19 and not late.done()
    assert done.result() == 1
    with pytest.raises(TimeoutError, match="late"):
        await late
    assert loop.time() - t0 >= 0.19 and len(d) == 0


async def test_a_discarded_future_never_times_out() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    fut = loop.create_future()
    d.add(fut, 0.02, lambda: TimeoutError("x"))
    d.discard(fut)
    await asyncio.sleep(0.05)
    assert not fut.done()
