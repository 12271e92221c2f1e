"""The client follows the leader (docs/api.md: not_leader names it) and rediscovers it after a
failover without the caller noticing — against the in-memory fake cluster (tests/fake_cluster.py)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fake_cluster import FakeCluster
from raftstate.client import AsyncClient, ConnectFailed, Unavailable
from raftstate.node.state.commands import SetKey


def client(fc: FakeCluster, endpoints: list[str] | None = None, **kw: object) -> AsyncClient:
    return AsyncClient(endpoints or fc.endpoints, transport=fc.transport(), rng=random.Random(7), **kw)  # type: ignore[arg-type]


async def test_not_leader_hint_is_followed_at_once_and_remembered() -> None:
    """A follower's not_leader names the leader: the client goes there without sleeping, and sends
    every later request straight to it."""
    fc = FakeCluster()
    fc.leader = "n3"
    async with client(fc) as state:
        t0 = time.monotonic()
        await state.set("a", 1)
        assert time.monotonic() - t0 < 0.05, "following a hint must not back off"
        assert state.leader == fc.endpoints[2]
        fc.log.clear()
        await state.get("a")
        await state.increment("n")
        assert {n for n, _ in fc.log} == {"n3"}


async def test_connection_refused_rotates_to_the_next_endpoint() -> None:
    fc = FakeCluster()
    fc.leader = "n2"
    fc.down.add("n1")
    async with client(fc) as state:
        assert await state.set("a", 1) > 0
        assert state.leader == fc.endpoints[1]


async def test_leader_named_by_address_only_is_learned() -> None:
    """Given one endpoint, the client reaches a leader it was never told about (membership grew)."""
    fc = FakeCluster()
    fc.leader = "n3"
    async with client(fc, endpoints=[fc.endpoints[0]]) as state:
        await state.set("a", 1)
        assert state.leader == fc.endpoints[2]
        assert fc.endpoints[2] in state.endpoints


async def test_failover_is_invisible_to_the_caller() -> None:
    """kill -9 of the leader: connections refused there, the others elect a new leader shortly;
    meanwhile they still name the dead one (stale hints). The call just succeeds, without spinning."""
    fc = FakeCluster()
    async with client(fc) as state:
        await state.set("a", 1)
        fc.down.add("n1")
        calls = 0

        def elect_later(node: str, _: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 6:
                fc.elect("n2")

        fc.on_request = elect_later
        t0 = time.monotonic()
        assert await state.set("a", 2) > 0
        assert time.monotonic() - t0 < 2.0
        assert state.leader == fc.endpoints[1]
        assert calls < 15, f"{calls} requests: the client spun on stale hints"


async def test_request_pending_on_a_deposed_leader_is_redirected_at_once() -> None:
    """A write hangs on n1; meanwhile n2 is elected and another call learns it (not_leader from n1).
    The hanging write is re-sent to n2 at once instead of waiting out its 5 s attempt timeout."""
    fc = FakeCluster()
    async with client(fc, attempt_timeout=5.0, probe_after=10.0) as state:
        await state.set("warm", 0)
        fc.fault("hang", node="n1", path="/v1/kv/a")
        pending = asyncio.create_task(state.set("a", 1))
        await asyncio.sleep(0.05)
        fc.elect("n2")
        t0 = time.monotonic()
        await state.get("warm")  # n1 answers not_leader naming n2
        await asyncio.wait_for(pending, 1.0)
        assert time.monotonic() - t0 < 0.5
        assert [n for n, _ in fc.requests("/v1/kv/a")] == ["n1", "n2"]


async def test_paused_leader_is_noticed_by_probing_who_leads() -> None:
    """SIGSTOP of the leader: it cannot say it lost leadership. A request pending for probe_after
    makes the client ask every node's /status; the new leader (higher term) takes the request."""
    fc = FakeCluster()
    async with client(fc, attempt_timeout=5.0, probe_after=0.2) as state:
        await state.set("a", 1)
        fc.paused.add("n1")
        fc.elect("n3")
        t0 = time.monotonic()
        await state.set("a", 2)
        took = time.monotonic() - t0
        assert took < 1.5, f"took {took:.2f}s: the pending write waited for its attempt timeout"
        assert state.leader == fc.endpoints[2]
        assert fc.requests("/status")


async def test_no_leader_reachable_raises_unavailable_with_the_last_cause() -> None:
    fc = FakeCluster()
    fc.down.update(fc.ids)
    async with client(fc, timeout=0.5) as state:
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as err:
            await state.get("a")
        assert 0.3 < time.monotonic() - t0 < 1.0
        assert isinstance(err.value.cause, ConnectFailed)
        assert "get key 'a'" in str(err.value) and "0.5s" in str(err.value)
        assert fc.endpoints[0] in str(err.value)


async def test_unavailable_answers_are_retried_with_backoff() -> None:
    fc = FakeCluster()
    fc.fault("unavailable", path="/v1/kv/a", times=3)
    async with client(fc) as state:
        assert await state.set("a", 1) > 0
        assert len(fc.requests("/v1/kv/a")) == 4


async def test_no_leader_known_yet_backs_off_then_succeeds() -> None:
    """During an election every node answers not_leader with a null hint."""
    fc = FakeCluster()
    fc.elect(None)
    async with client(fc) as state:
        asyncio.get_running_loop().call_later(0.3, fc.elect, "n2")
        assert await state.set("a", 1) > 0
        assert 5 <= len(fc.log) < 40, "backed off, without spinning"


async def test_stale_reads_go_to_any_node() -> None:
    fc = FakeCluster()
    fc.elect(None)  # no leader at all: stale reads still work
    async with client(fc) as state:
        fc.commit(SetKey("a", 1))
        assert await state.get("a", consistency="stale") == 1


async def test_wait_for_leader() -> None:
    fc = FakeCluster()
    fc.elect(None)
    async with client(fc) as state:
        asyncio.get_running_loop().call_later(0.2, fc.elect, "n3")
        assert await state.wait_for_leader(timeout=2) == fc.endpoints[2]
        fc.elect(None)
        with pytest.raises(Unavailable, match="reported a leader"):
            await state.wait_for_leader(timeout=0.3)
