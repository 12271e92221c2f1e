"""Quotas decided at apply (issue 18, item 4), on the state machine alone: a lease cap, per-token
lock and session quotas, the admin reserve, and an admin's force-release — every number carried
in the command, so two replicas applying one log agree.

The issue's scenario: with ``max_locks: 5`` one write token took five locks with a 10-year ttl and
every further acquire — an admin's too — was refused until 2036.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from raftstate.client import protocol as p
from raftstate.node.api.admission import check_room, stamp
from raftstate.node.api.schema import ApiLimits
from raftstate.node.errors import Refusal
from raftstate.node.security.config import Role
from raftstate.node.state.commands import (
    MAX_DURATION_MS,
    AcquireLock,
    Command,
    OpenSession,
    RenewLock,
    decode,
    encode,
)
from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.state.quotas import admin_reserve, writer_limit

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
TEN_YEARS_MS = MAX_DURATION_MS
LIM = ApiLimits(
    max_locks=5,
    max_sessions=5,
    max_lock_ttl_ms=DAY_MS,
    max_locks_per_token=3,
    max_sessions_per_token=2,
)
WRITER = ("workers", Role.WRITE)
OTHER = ("reports", Role.WRITE)
ADMIN = ("ops", Role.ADMIN)


def acquire(name: str, caller: tuple[str, Role] | None, ttl_ms: int = 60_000) -> bytes:
    """The log bytes the leader's API proposes for an acquire by ``caller``."""
    return encode(stamp(Command(AcquireLock(name, f"owner-of-{name}", ttl_ms, LIM.max_locks)), caller, LIM))


def open_session(caller: tuple[str, Role] | None) -> bytes:
    return encode(stamp(Command(OpenSession(60_000, 10, LIM.max_sessions)), caller, LIM))


def code(outcome: Any) -> str:
    return outcome.code if isinstance(outcome, Refusal) else "ok"


class Log:
    """Entries applied in order to a state machine (one replica)."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def apply(self, data: bytes, at_ms: int = T0) -> Any:
        self.index += 1
        return self.sm.apply(self.index, at_ms, data)


# --------------------------------------------------------------------------- the rules


def test_the_admin_reserve_is_one_percent_at_least_one_never_all() -> None:
    assert [admin_reserve(n) for n in (1, 2, 5, 99, 100, 250, 100_000)] == [0, 1, 1, 1, 1, 2, 1000]
    assert [writer_limit(n) for n in (1, 2, 5, 100_000)] == [1, 1, 4, 99_000]


def test_the_stamp_carries_the_token_name_and_its_quotas_never_the_secret() -> None:
    cmd = decode(acquire("L", WRITER))
    assert isinstance(cmd.op, AcquireLock)
    assert (cmd.op.caller, cmd.op.max_per_caller, cmd.op.max_locks, cmd.op.max_ttl_ms) == (
        "workers",
        3,
        4,
        DAY_MS,
    )
    cmd = decode(acquire("L", ADMIN))
    assert isinstance(cmd.op, AcquireLock)
    assert (cmd.op.caller, cmd.op.max_per_caller, cmd.op.max_locks) == ("ops", None, 5)
    cmd = decode(acquire("L", None))  # auth off: no name, no per-token quota, the whole limit
    assert isinstance(cmd.op, AcquireLock)
    assert (cmd.op.caller, cmd.op.max_per_caller, cmd.op.max_locks) == (None, None, 5)
    renew = stamp(Command(RenewLock("L", 7, TEN_YEARS_MS)), WRITER, LIM)
    assert isinstance(renew.op, RenewLock) and renew.op.max_ttl_ms == DAY_MS
    s = decode(open_session(WRITER))
    assert isinstance(s.op, OpenSession)
    assert (s.op.caller, s.op.max_per_caller, s.op.max_sessions) == ("workers", 2, 4)


# --------------------------------------------------------------------------- the scenario


def test_ten_year_leases_are_refused_and_writers_cannot_lock_out_an_admin() -> None:
    log = Log()
    # Five 10-year acquires by one write token: each refused (longer than max_lock_ttl_s).
    for i in range(5):
        out = log.apply(acquire(f"forever{i}", WRITER, ttl_ms=TEN_YEARS_MS))
        assert isinstance(out, Refusal) and out.code == p.INVALID_REQUEST
        assert "longer than the longest lease, 86400 s (settings.max_lock_ttl_s)" in out.message
    assert len(log.sm.locks) == 0
    # Within the cap, writers fill what they may: 4 of 5 (two tokens; each at most 3).
    outcomes = [code(log.apply(acquire(f"w{i}", WRITER, DAY_MS))) for i in range(3)]
    outcomes += [code(log.apply(acquire(f"r{i}", OTHER, DAY_MS))) for i in range(3)]
    assert outcomes == ["ok", "ok", "ok", "ok", p.TOO_MANY_LOCKS, p.TOO_MANY_LOCKS]
    # ...and the admin still acquires: the reserve is its.
    assert code(log.apply(acquire("admin-fix", ADMIN, DAY_MS))) == "ok"
    assert len(log.sm.locks) == 5
    assert code(log.apply(acquire("admin-more", ADMIN))) == p.TOO_MANY_LOCKS  # the cluster-wide limit
    # A renewal cannot stretch a lease past the cap either.
    token = log.sm.locks.locks["w0"].token
    out = log.apply(encode(stamp(Command(RenewLock("w0", token, TEN_YEARS_MS)), WRITER, LIM)))
    assert code(out) == p.INVALID_REQUEST and log.sm.locks.locks["w0"].ttl_ms == DAY_MS
    assert code(log.apply(encode(stamp(Command(RenewLock("w0", token)), WRITER, LIM)))) == "ok"


def test_a_token_holds_at_most_its_quota_of_locks_and_expired_ones_do_not_count() -> None:
    log = Log()
    assert [code(log.apply(acquire(f"w{i}", WRITER))) for i in range(4)] == [
        "ok",
        "ok",
        "ok",
        p.TOO_MANY_LOCKS,
    ]
    out = log.apply(acquire("w9", WRITER))
    assert isinstance(out, Refusal) and out.fields == {"limit": 3, "caller": "workers"}
    assert "token 'workers' holds 3 locks, its quota is 3 (settings.max_locks_per_token)" in out.message
    assert code(log.apply(acquire("r0", OTHER))) == "ok"  # another token has its own quota
    # Released or expired (not yet swept): room again, whenever the sweep runs.
    token = log.sm.locks.locks["w0"].token
    assert log.apply(encode_command("lock_release", name="w0", token=token)) == {"released": True}
    assert code(log.apply(acquire("w4", WRITER))) == "ok"
    later = T0 + 61_000
    assert code(log.apply(acquire("w5", WRITER), at_ms=later)) == "ok"


def test_sessions_per_token_and_the_admin_reserve() -> None:
    log = Log()
    outcomes = [code(log.apply(open_session(WRITER))) for _ in range(3)]
    assert outcomes == ["ok", "ok", p.TOO_MANY_SESSIONS]
    outcomes = [code(log.apply(open_session(OTHER))) for _ in range(3)]
    assert outcomes == ["ok", "ok", p.TOO_MANY_SESSIONS]  # 4 open: the writers' share is full
    assert code(log.apply(open_session(("third", Role.WRITE)))) == p.TOO_MANY_SESSIONS
    assert code(log.apply(open_session(ADMIN))) == "ok"  # the reserve
    callers = sorted(s.caller or "" for s in log.sm.sessions.sessions.values())
    assert callers == ["ops", "reports", "reports", "workers", "workers"]  # each records its token


def test_the_leaders_admission_refuses_what_apply_would() -> None:
    log = Log()
    for i in range(3):
        log.apply(acquire(f"w{i}", WRITER))
    for data in (acquire("x", WRITER), acquire("y", WRITER, TEN_YEARS_MS)):
        cmd = decode(data)
        with pytest.raises(Refusal) as early:
            check_room(cmd, log.sm, T0)
        late = log.apply(data)
        assert isinstance(late, Refusal) and (early.value.code, early.value.message) == (
            late.code,
            late.message,
        )
    check_room(decode(acquire("z", ADMIN)), log.sm, T0)  # passes


def test_force_release_frees_a_lock_whoever_holds_it() -> None:
    log = Log()
    log.apply(acquire("stuck", WRITER, DAY_MS))
    token = log.sm.locks.locks["stuck"].token
    out = log.apply(encode_command("lock_force_release", name="stuck"))
    assert out == {"released": True, "owner": "owner-of-stuck", "token": token, "caller": "workers"}
    assert log.sm.lock("stuck", T0) is None
    assert log.apply(encode_command("lock_force_release", name="stuck")) == {"released": False}
    # The old holder's token is dead: its release and fenced writes are refused (lock_lost).
    assert code(log.apply(encode_command("lock_release", name="stuck", token=token))) == "ok"  # free: no-op
    assert code(log.apply(acquire("stuck", WRITER))) == "ok"
    fenced = encode_command("set", key="k", value=1, fence_lock="stuck", fence_token=token)
    assert code(log.apply(fenced)) == p.LOCK_LOST
    # The quota follows: the forced-out lock no longer counts against its token.
    assert log.sm.locks._callers.count("workers") == 1


# --------------------------------------------------------------------------- determinism


def test_two_replicas_applying_one_log_agree_byte_for_byte() -> None:
    """A random log of quota-stamped acquires, renewals, releases, sessions, force-releases and
    sweeps, applied by two machines (one restored from the other's snapshot half-way): the same
    outcomes, the same snapshot bytes."""
    rng = random.Random(18)
    callers: list[tuple[str, Role] | None] = [WRITER, OTHER, ADMIN, None]
    a, b = Log(), Log()
    now = T0
    for step in range(600):
        now += rng.randrange(0, 20_000)
        pick = rng.random()
        name = f"L{rng.randrange(12)}"
        if pick < 0.4:
            data = acquire(name, rng.choice(callers), rng.choice([30_000, 60_000, DAY_MS, TEN_YEARS_MS]))
        elif pick < 0.55:
            lk = a.sm.locks.locks.get(name)
            data = encode_command("lock_release", name=name, token=lk.token if lk else 1)
        elif pick < 0.65:
            lk = a.sm.locks.locks.get(name)
            ttl = rng.choice([60_000, TEN_YEARS_MS])
            data = encode(stamp(Command(RenewLock(name, lk.token if lk else 1, ttl)), WRITER, LIM))
        elif pick < 0.8:
            data = open_session(rng.choice(callers))
        elif pick < 0.85:
            data = encode_command("lock_force_release", name=name)
        else:
            due = a.sm.due(now, 50)
            if due is None:
                continue
            data = encode_command(
                "expire", locks=list(due.locks), sessions=list(due.sessions), keys=list(due.keys)
            )
        out_a, out_b = a.apply(data, now), b.apply(data, now)
        assert out_a == out_b, (step, out_a, out_b)
        if step == 300:  # b continues from a snapshot of itself: the derived per-token index too
            snap = b.sm.snapshot()
            b.sm = KVStateMachine()
            b.sm.restore(snap)
    assert a.sm.snapshot() == b.sm.snapshot()
    assert {c for c in (lk.caller for lk in a.sm.locks.locks.values())} <= {"workers", "reports", "ops", None}
