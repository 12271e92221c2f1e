"""Exactly-once writes (docs/api.md "Sessions"; Raft dissertation §6.3; RAFT-PITFALLS "Client
sessions"): every attempt of one write carries the same (session, seq); a write whose outcome
cannot be learnt raises OutcomeUnknown, never "failed"; reads are not numbered."""

from __future__ import annotations

import asyncio
import random

import pytest

from fake_cluster import FakeCluster, ManualClock
from raftstate.client import (
    AsyncClient,
    InvalidRequest,
    OutcomeUnknown,
    ResponseLost,
    SessionExpired,
    TooLarge,
    Unavailable,
    VersionMismatch,
    WrongType,
)
from raftstate.client._transport import Response


def client(fc: FakeCluster, **kw: object) -> AsyncClient:
    return AsyncClient(fc.endpoints, transport=fc.transport(), rng=random.Random(3), **kw)  # type: ignore[arg-type]


def idents(fc: FakeCluster, path: str) -> list[tuple[int, int]]:
    return [(r.body["session"], r.body["seq"]) for _, r in fc.requests(path)]


def assert_never_applied_twice(fc: FakeCluster) -> None:
    assert fc.applied and max(fc.applied.values()) == 1, fc.applied


async def test_lost_reply_is_retried_with_the_same_session_and_seq() -> None:
    """The increment was applied but its reply lost: the retry carries the same (session, seq),
    the cluster answers the first outcome, and the counter moves once."""
    fc = FakeCluster()
    fc.fault("apply_then_lose", path="/v1/kv/n/increment")
    async with client(fc) as state:
        assert await state.increment("n") == 1
    ids = idents(fc, "/v1/kv/n/increment")
    assert len(ids) == 2 and ids[0] == ids[1]
    assert fc.kv["n"].value == 1
    assert_never_applied_twice(fc)


async def test_retry_across_a_leader_failover_applies_once() -> None:
    """The old leader applied the write, then stopped answering and lost leadership. The retry goes
    to the new leader with the same (session, seq) and gets the first outcome."""
    fc = FakeCluster()
    async with client(fc, attempt_timeout=0.3) as state:
        await state.set("warm", 1)
        fc.fault("apply_then_hang", node="n1", path="/v1/kv/n/increment")
        fc.on_request = lambda node, r: fc.elect("n2") if r.path.endswith("increment") else None
        assert await state.increment("n", 5) == 5
    nodes = [n for n, _ in fc.requests("/v1/kv/n/increment")]
    assert nodes[0] == "n1" and nodes[-1] == "n2"
    assert len(set(idents(fc, "/v1/kv/n/increment"))) == 1
    assert fc.kv["n"].value == 5
    assert_never_applied_twice(fc)


async def test_outcome_unknown_answer_is_resolved_by_a_retry() -> None:
    fc = FakeCluster()
    fc.fault("outcome_unknown", path="/v1/kv/n/increment", times=2)
    async with client(fc) as state:
        assert await state.increment("n") == 1
    assert len(set(idents(fc, "/v1/kv/n/increment"))) == 1
    assert_never_applied_twice(fc)


async def test_outcome_that_stays_unknown_raises_outcome_unknown_not_failed() -> None:
    """Every attempt reached the leader and lost its answer until the deadline: the write may have
    been applied (it was, here). The client must say so — never Unavailable, never "failed"."""
    fc = FakeCluster()
    fc.fault("apply_then_lose", path="/v1/kv/n/increment", times=1000)
    async with client(fc, timeout=0.4) as state:
        with pytest.raises(OutcomeUnknown) as err:
            await state.increment("n")
    e = err.value
    assert isinstance(e.cause, ResponseLost)
    assert (e.session, e.seq) == idents(fc, "/v1/kv/n/increment")[0]
    assert "increment key 'n'" in str(e) and "may or may not" in str(e)
    assert fc.kv["n"].value == 1
    assert_never_applied_twice(fc)


async def test_write_that_never_reached_a_node_raises_unavailable() -> None:
    """Connections refused and 503s only: certainly not applied, so Unavailable (safe to retry)."""
    fc = FakeCluster()
    async with client(fc, timeout=0.4) as state:
        await state.set("warm", 1)
        fc.fault("refuse", path="/v1/kv/a", times=1000)
        fc.fault("unavailable", path="/v1/kv/a", times=1000)
        with pytest.raises(Unavailable) as err:
            await state.set("a", 1)
    assert "set key 'a'" in str(err.value)
    assert "a" not in fc.kv


async def test_one_lost_reply_then_refusals_is_still_unknown() -> None:
    """Once any attempt may have been applied, later 'certainly not applied' answers of *other*
    attempts do not make the write's outcome known."""
    fc = FakeCluster()
    fc.fault("hang", path="/v1/kv/a")  # may have reached the node
    fc.fault("unavailable", path="/v1/kv/a", times=1000)
    async with client(fc, timeout=0.5, attempt_timeout=0.1) as state:
        with pytest.raises(OutcomeUnknown):
            await state.set("a", 1)


async def test_seq_counts_up_and_ack_trails_every_outcome() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        for i in range(4):
            await state.set(f"k{i}", i)
        await state.get("k0")
    bodies = [r.body for _, r in fc.log if r.method == "PUT"]
    assert [(b["seq"], b.get("ack")) for b in bodies] == [(1, None), (2, 1), (3, 2), (4, 3)]
    assert {b["session"] for b in bodies} == {1}


async def test_ack_never_passes_a_write_still_in_flight() -> None:
    fc = FakeCluster()
    async with client(fc, attempt_timeout=0.3) as state:
        await state.set("warm", 0)  # seq 1
        fc.fault("apply_then_hang", path="/v1/kv/slow")  # seq 2: first attempt hangs 0.3 s
        slow = asyncio.create_task(state.set("slow", 1))
        await asyncio.sleep(0.05)
        for i in range(3):  # seqs 3..5 complete while seq 2 is outstanding
            await state.set(f"k{i}", i)
        await slow
        await state.set("after", 1)
    acks = {r.body["seq"]: r.body.get("ack") for _, r in fc.log if r.method == "PUT"}
    assert acks[3] == acks[4] == acks[5] == 1, acks
    assert acks[6] == 5
    assert_never_applied_twice(fc)


async def test_abandoned_seq_is_acknowledged_later_and_never_resent() -> None:
    fc = FakeCluster()
    fc.fault("apply_then_lose", path="/v1/kv/x", times=1000)
    async with client(fc, timeout=0.3) as state:
        with pytest.raises(OutcomeUnknown) as err:
            await state.set("x", 1)
        fc.faults.clear()
        await state.set("y", 1)
    lost_seq = err.value.seq
    assert lost_seq is not None
    y = fc.requests("/v1/kv/y")[0][1].body
    assert y["seq"] == lost_seq + 1 and y["ack"] == lost_seq


async def test_expired_session_before_any_attempt_applied_is_transparent() -> None:
    """session_expired on a first attempt: nothing was applied, so the client registers a new
    session and sends the write again under it."""
    clock = ManualClock()
    fc = FakeCluster(clock=clock, session_idle_timeout_s=60)
    async with client(fc) as state:
        await state.set("a", 1)
        first = state.session
        fc.sessions.clear()  # the cluster forgot it (e.g. restored from an old snapshot)
        assert await state.increment("n") == 1
        assert state.session != first
    assert fc.kv["n"].value == 1
    assert_never_applied_twice(fc)


async def test_expired_session_after_a_lost_reply_raises_outcome_unknown() -> None:
    """The first attempt may have been applied, then the session expired: re-sending under a new
    session could apply it twice, so the client reports OutcomeUnknown and moves on."""
    fc = FakeCluster()
    async with client(fc) as state:
        await state.set("warm", 1)
        old = state.session
        fc.fault("apply_then_lose", path="/v1/kv/n/increment")
        fc.fault("expire_session", path="/v1/kv/n/increment")
        with pytest.raises(OutcomeUnknown) as err:
            await state.increment("n")
        assert isinstance(err.value.cause, SessionExpired)
        assert "session" in str(err.value) and "expired" in str(err.value)
        assert await state.increment("n") == 2  # the next write gets a new session
        assert state.session != old
    assert_never_applied_twice(fc)


async def test_idle_session_is_replaced_before_it_expires() -> None:
    """Idle for most of the cluster's session_idle_timeout_s: the next write opens a new session first
    (rather than meet session_expired on a retry, which would make its outcome unknown)."""
    fc = FakeCluster(session_idle_timeout_s=0.2)
    async with client(fc) as state:
        await state.set("a", 1)
        first = state.session
        await asyncio.sleep(0.25)
        await state.set("a", 2)
        assert state.session != first
        assert not fc.requests("/v1/kv/a")[-1][1].body.get("ack")


async def test_reads_are_not_numbered() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        await state.get("a")
        await state.get_entry("a", consistency="stale")
        _ = [k async for k in state.keys("x")]
        await state.lock_info("l")
    assert not fc.requests("/v1/sessions")
    assert all(r.body is None for _, r in fc.log)


async def test_refusals_are_definitive_and_name_the_key_and_node() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        v = await state.set("a", "text")
        assert await state.compare_and_set("a", "new", version=v + 100) is False
        with pytest.raises(VersionMismatch) as vm:
            await state.delete("a", version=v + 100)
        assert vm.value.actual == v and "'a'" in str(vm.value) and fc.endpoints[0] in str(vm.value)
        with pytest.raises(WrongType) as wt:
            await state.increment("a")
        assert wt.value.key == "a" and "'a'" in str(wt.value)
        assert await state.compare_and_set("a", "new", version=v) is True
        assert await state.get("a") == "new"
    # A refusal is an outcome: no retries.
    assert len(fc.requests("/v1/kv/a/increment")) == 1


async def test_too_large_carries_the_limit() -> None:
    fc = FakeCluster()
    message = "value of key 'big' is 2000000 bytes; limit 1048576"
    body = {"error": {"code": "value_too_large", "message": message, "key": "big", "limit": 1048576}}
    transport = fc.transport()

    async def send(endpoint: str, request: object, timeout_s: float) -> Response:
        return Response(413, body)

    transport.send = send  # type: ignore[method-assign]
    async with AsyncClient(fc.endpoints, transport=transport) as state:
        with pytest.raises(TooLarge) as err:
            await state.get("big")
    assert (
        err.value.limit == 1048576
        and isinstance(err.value, InvalidRequest)
        and isinstance(err.value, ValueError)
    )
    assert "1048576" in str(err.value) and "'big'" in str(err.value)


async def test_many_concurrent_increments_with_lost_replies_count_exactly() -> None:
    fc = FakeCluster()
    fc.fault("apply_then_lose", path="/increment", times=15)
    fc.fault("outcome_unknown", path="/increment", times=15)
    async with client(fc) as state:
        results = await asyncio.gather(*(state.increment("n") for _ in range(100)))
    assert sorted(results) == list(range(1, 101))
    assert fc.kv["n"].value == 100
    assert_never_applied_twice(fc)


async def test_a_slow_write_does_not_fill_the_session_for_the_others() -> None:
    """One write retrying for long keeps ack below its seq while other tasks keep writing: the
    cluster would refuse the session once it holds max_session_results outcomes, so the client
    numbers new writes in a fresh session first. Every write applies exactly once."""
    fc = FakeCluster(max_session_results=5)
    async with client(fc, attempt_timeout=0.5) as state:
        state._sessions._max_unacked = 4
        await state.set("warm", 0)
        fc.fault("apply_then_hang", path="/v1/kv/slow")
        slow = asyncio.create_task(state.set("slow", 1))
        await asyncio.sleep(0.05)
        for _ in range(20):
            await state.increment("n")
        await slow
        opened = set(fc.sessions)  # before close() ends the current one
    assert fc.kv["n"].value == 20
    numbered = {(r.body["session"], r.body["seq"]) for _, r in fc.log if r.body and "seq" in r.body}
    # one fresh session once 4 seqs were unacknowledged: the only two the cluster ever opened (a
    # session's id is the log index of its opening)
    assert len(opened) == 2 and {sid for sid, _ in numbered} == opened
    assert numbered == set(fc.applied), "the cluster refused a write: the session was full"
    assert_never_applied_twice(fc)


async def test_session_full_refusal_is_resent_under_a_new_session() -> None:
    """The cluster's max_session_results is below the client's own limit: its refusal (nothing
    applied) makes the client re-send that write under a new session."""
    fc = FakeCluster(max_session_results=3)
    async with client(fc, attempt_timeout=0.5) as state:
        await state.set("warm", 0)
        fc.fault("apply_then_hang", path="/v1/kv/slow")
        slow = asyncio.create_task(state.set("slow", 1))
        await asyncio.sleep(0.05)
        for _ in range(6):
            await state.increment("n")
        await slow
    assert fc.kv["n"].value == 6
    numbered = {(r.body["session"], r.body["seq"]) for _, r in fc.log if r.body and "seq" in r.body}
    assert numbered - set(fc.applied), "expected the cluster to refuse a write of the full session"
    assert_never_applied_twice(fc)
