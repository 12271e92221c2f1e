"""once(key, ttl): the body runs for the first caller only; a failed body releases the claim; a
crashed claimer's claim lapses after claim_ttl and another caller runs the body (client/_once.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from fake_cluster import FakeCluster
from raftstate.client import AsyncClient, LockHeld


def client(fc: FakeCluster, **kw: object) -> AsyncClient:
    return AsyncClient(fc.endpoints, transport=fc.transport(), rng=random.Random(9), **kw)  # type: ignore[arg-type]


async def test_first_caller_runs_the_body_later_callers_do_not() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        async with state.once("evt_1", ttl=3600) as first:
            assert first is True
        async with state.once("evt_1", ttl=3600) as first:
            assert first is False
        entry = await state.get_entry("evt_1")
    assert entry is not None and entry.value["once"] == "done" and entry.expires_at is not None
    expires_at_ms = fc.kv["evt_1"].expires_at_ms
    assert expires_at_ms is not None and expires_at_ms / 1000 == pytest.approx(fc.clock() + 3600, abs=5)


async def test_body_exception_releases_the_claim_for_a_retry() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        with pytest.raises(RuntimeError):
            async with state.once("evt_2", ttl=3600) as first:
                assert first
                raise RuntimeError("card declined")
        assert "evt_2" not in fc.kv
        async with state.once("evt_2", ttl=3600) as first:
            assert first is True


async def test_racing_callers_run_the_body_exactly_once() -> None:
    fc = FakeCluster()
    runs: list[int] = []

    async def worker(i: int) -> bool:
        async with client(fc) as state, state.once("evt_3", ttl=3600, claim_ttl=2) as first:
            if first:
                runs.append(i)
                await asyncio.sleep(0.3)  # the others find it running and wait
            return first

    results = await asyncio.gather(*(worker(i) for i in range(8)))
    assert len(runs) == 1 and results.count(True) == 1


async def test_crashed_claimer_is_taken_over_after_the_claim_lapses() -> None:
    """A claimer that dies mid-body never deletes its claim: the next caller waits for it to lapse
    (claim_ttl) and then runs the body itself."""
    fc = FakeCluster()
    async with client(fc) as crasher, client(fc) as survivor:
        ctx = crasher.once("evt_4", ttl=3600, claim_ttl=0.5)
        assert await ctx.__aenter__() is True
        await crasher.close()  # "kill -9": no exit, no release, no renewals from now on
        ctx._renewer.cancel()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with survivor.once("evt_4", ttl=3600, claim_ttl=0.5) as first:
            assert first is True
        assert 0.3 < loop.time() - t0 < 1.5


async def test_long_body_keeps_its_claim_by_renewing() -> None:
    fc = FakeCluster()
    async with client(fc) as a, client(fc) as b:

        async def slow() -> bool:
            async with a.once("evt_5", ttl=3600, claim_ttl=0.4) as first:
                await asyncio.sleep(1.2)  # three claim_ttls
                return first

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.1)
        async with b.once("evt_5", ttl=3600, claim_ttl=0.4) as first:
            assert first is False  # waited for the running body to finish, then saw it done
        assert await task is True
    assert len(fc.requests("/v1/kv/evt_5")) > 4  # renewals happened


async def test_waiting_is_bounded_by_wait() -> None:
    fc = FakeCluster()
    async with client(fc, owner="w-1") as a, client(fc) as b:
        async with a.once("evt_6", ttl=3600, claim_ttl=5) as first:
            assert first
            with pytest.raises(LockHeld) as err:
                async with b.once("evt_6", ttl=3600, wait=0.2):
                    pass
    assert "w-1" in str(err.value) and "'evt_6'" in str(err.value)


async def test_a_value_once_did_not_write_counts_as_done() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        await state.set("evt_7", {"processed": True})
        async with state.once("evt_7", ttl=60) as first:
            assert first is False
