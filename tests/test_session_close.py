"""Sessions end (issue 19, item 2): ``DELETE /v1/sessions/{id}`` forgets a session and its outcomes
at once, idempotently; ``AsyncClient.close()`` / ``Client.close()`` send it, best effort and
bounded. State-machine rules here; the real-process check (three CLI calls leave no session) is in
tests/test_session_close_cluster.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_state_machine import T0, Log

from fake_cluster import FakeCluster
from raftstate.client import AsyncClient, Client
from raftstate.client import protocol as p
from raftstate.node.api.schema import ApiLimits, close_session
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    CloseSession,
    Command,
    Increment,
    OpenSession,
    SessionRef,
    decode,
    encode,
)
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.tables import StateTables

LIMITS = ApiLimits(
    max_key_bytes=1024, max_value_bytes=1024, session_idle_timeout_ms=60_000, max_session_results=100
)


def _open(log: Log) -> int:
    sid: int = log.ok(OpenSession(60_000, 100))["session"]
    return sid


def test_close_forgets_the_session_and_its_outcomes_at_once() -> None:
    log = Log()
    sid = _open(log)
    log.ok(Increment("c"), session=SessionRef(sid, 1))
    assert log.ok(CloseSession(sid)) == {"closed": True}
    assert sid not in log.sm.sessions.sessions and len(log.sm.sessions) == 0
    # A write of the closed session still in the log is refused, not applied (nor replayed).
    e = log.err(Increment("c"), session=SessionRef(sid, 1))
    assert e.code == p.SESSION_EXPIRED
    rec = log.sm.get("c", T0)
    assert rec is not None and rec.value == 1


def test_close_is_idempotent() -> None:
    """Closing twice, closing a session that expired, or one never opened: closed false, no change."""
    log = Log()
    sid = _open(log)
    assert log.ok(CloseSession(sid))["closed"] is True
    before = log.sm.sessions.rows()
    assert log.ok(CloseSession(sid)) == {"closed": False}
    assert log.ok(CloseSession(987654)) == {"closed": False}
    assert log.sm.sessions.rows() == before


def test_close_reaches_the_store_and_the_snapshot() -> None:
    """The row is removed at the next flush (a restart does not bring the session back), and the
    snapshot no longer holds it."""
    tables = StateTables.in_memory()
    sm = KVStateMachine(tables)
    log = Log(sm)
    keep, gone = _open(log), _open(log)
    sm.flush()
    log.ok(CloseSession(gone))
    sm.flush()
    sm.reopen(tables)
    assert set(sm.sessions.sessions) == {keep}
    restored = KVStateMachine()
    restored.restore(sm.snapshot())
    assert set(restored.sessions.sessions) == {keep}


def test_an_expiry_sweep_after_a_close_is_harmless() -> None:
    log = Log()
    sid = _open(log)
    log.ok(CloseSession(sid))
    assert log.sm.due(T0 + 120_000, 10) is None  # the expiry index no longer names it


def test_the_command_round_trips_and_the_schema_checks_the_id() -> None:
    cmd = close_session("42", {}, LIMITS)
    assert decode(encode(cmd)) == Command(CloseSession(42))
    for bad in ("0", "x", "-1", "1" * 25):
        with pytest.raises(Refusal) as err:
            close_session(bad, {}, LIMITS)
        assert err.value.code == p.INVALID_REQUEST and "session id" in err.value.message


async def test_async_client_close_ends_its_session() -> None:
    fc = FakeCluster()
    state = AsyncClient(fc.endpoints, transport=fc.transport())
    await state.increment("n")
    assert len(fc.sessions) == 1
    await state.close()
    assert fc.sessions == {}


async def test_a_client_that_never_wrote_sends_nothing_on_close() -> None:
    fc = FakeCluster()
    async with AsyncClient(fc.endpoints, transport=fc.transport()) as state:
        await state.get("n")
    assert fc.sessions == {} and not fc.requests("/v1/sessions")  # none opened, none closed


def test_the_blocking_client_closes_its_session_too() -> None:
    fc = FakeCluster()
    with Client(fc.endpoints, transport=fc.transport()) as state:
        state.set("k", 1)
        assert len(fc.sessions) == 1
    assert fc.sessions == {}


async def test_close_is_bounded_when_the_cluster_is_gone() -> None:
    """Best effort: the cluster is unreachable, close() still returns within about a second."""
    fc = FakeCluster()
    state = AsyncClient(fc.endpoints, transport=fc.transport())
    await state.increment("n")
    fc.paused.update(fc.ids)  # SIGSTOP: every request hangs
    t0 = time.monotonic()
    await asyncio.wait_for(state.close(), 5)
    assert time.monotonic() - t0 < 2.0
    assert len(fc.sessions) == 1  # not closed: it expires after its idle timeout


def test_only_the_token_that_opened_a_session_or_an_admin_closes_it() -> None:
    """The rule is decided at apply from the names stamped into the commands (admission.stamp):
    another write token is refused forbidden and the session stays; an admin (caller absent) and
    the opener itself close it."""
    log = Log()
    a = log.ok(OpenSession(60_000, 100, caller="worker-a"))["session"]
    b = log.ok(OpenSession(60_000, 100, caller="worker-a"))["session"]
    e = log.err(CloseSession(a, caller="worker-b"))
    assert e.code == p.FORBIDDEN and "worker-a" in e.message and e.fields["session"] == a
    assert a in log.sm.sessions.sessions
    assert log.ok(CloseSession(a, caller="worker-a")) == {"closed": True}
    assert log.ok(CloseSession(b)) == {"closed": True}  # an admin token, or auth off
    assert len(log.sm.sessions) == 0 and log.sm.sessions._callers.count("worker-a") == 0


def test_the_api_stamps_who_closes() -> None:
    from raftstate.node.api.admission import stamp
    from raftstate.node.security.config import Role

    cmd = close_session("7", {}, LIMITS)
    assert stamp(cmd, ("worker-b", Role.WRITE), LIMITS).op == CloseSession(7, caller="worker-b")
    assert stamp(cmd, ("ops", Role.ADMIN), LIMITS).op == CloseSession(7)
    assert stamp(cmd, None, LIMITS).op == CloseSession(7)
    wire = encode(stamp(cmd, ("worker-b", Role.WRITE), LIMITS))
    assert decode(wire).op == CloseSession(7, caller="worker-b")
