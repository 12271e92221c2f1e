"""The job-state machine, pure and fast: each rule of docs/api.md applied from the log alone.

Every test drives :class:`KVStateMachine` with encoded commands at chosen indexes and entry times
(``time_ms``): nothing reads a clock, so the "time" of each step is exactly what the leader stamped.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    AcquireLock,
    Command,
    DeleteKey,
    Expire,
    Fence,
    Increment,
    KeepAlive,
    OpenSession,
    Operation,
    ReleaseLock,
    RenewLock,
    SessionRef,
    SetKey,
    decode,
    encode,
)
from raftstate.node.state.expiry import ExpiryIndex
from raftstate.node.state.machine import KVStateMachine, encode_command

T0 = 1_700_000_000_000  # an arbitrary cluster time (ms)


class Log:
    """Applies commands to a state machine as consecutive log entries at given times."""

    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm or KVStateMachine()
        self.index = self.sm.applied_index

    def do(
        self, op: Operation, t: int = T0, *, session: SessionRef | None = None, fence: Fence | None = None
    ) -> Any:
        return self.raw(encode(Command(op, session, fence)), t)

    def raw(self, data: bytes, t: int = T0) -> Any:
        self.index += 1
        return self.sm.apply(self.index, t, data)

    def ok(self, op: Operation, t: int = T0, **kw: Any) -> dict[str, Any]:
        out = self.do(op, t, **kw)
        assert isinstance(out, dict), out
        return out

    def err(self, op: Operation, t: int = T0, **kw: Any) -> Refusal:
        out = self.do(op, t, **kw)
        assert isinstance(out, Refusal), out
        return out


def state_rows(sm: KVStateMachine) -> Any:
    return (sm.keys.rows(), sm.locks.rows(), sm.sessions.rows())


# =========================================================================== keys


def test_set_returns_the_log_index_as_version_and_get_reads_it() -> None:
    log = Log()
    assert log.ok(SetKey("a", {"n": 1})) == {"version": 1, "created": True, "expires_at": None}
    assert log.ok(SetKey("a", [1, 2])) == {"version": 2, "created": False, "expires_at": None}
    rec = log.sm.get("a", T0)
    assert rec is not None and (rec.value, rec.version, rec.expires_at_ms) == ([1, 2], 2, None)
    assert log.ok(SetKey("n", None))["created"] is True  # null is a value like any other
    assert log.sm.get("n", T0) is not None


def test_if_absent_returns_the_existing_version_without_writing() -> None:
    log = Log()
    log.ok(SetKey("a", 1))
    assert log.ok(SetKey("a", 2, if_absent=True)) == {"version": 1, "created": False, "expires_at": None}
    rec = log.sm.get("a", T0)
    assert rec is not None and rec.value == 1


def test_if_version_is_compare_and_set() -> None:
    log = Log()
    log.ok(SetKey("a", 1))
    e = log.err(SetKey("a", 2, if_version=7))
    assert (e.code, e.fields) == (p.VERSION_MISMATCH, {"key": "a", "version": 1})
    assert "'a'" in e.message and "version 1" in e.message
    assert log.ok(SetKey("a", 2, if_version=1))["version"] == 3
    e = log.err(SetKey("missing", 2, if_version=1))
    assert e.fields == {"key": "missing", "version": None}


def test_delete_says_whether_the_key_existed_and_honours_if_version() -> None:
    log = Log()
    log.ok(SetKey("a", 1))
    assert log.err(DeleteKey("a", if_version=9)).code == p.VERSION_MISMATCH
    assert log.sm.get("a", T0) is not None
    assert log.ok(DeleteKey("a", if_version=1)) == {"deleted": True}
    assert log.ok(DeleteKey("a")) == {"deleted": False}


def test_increment_starts_at_zero_and_refuses_non_integers_and_overflow() -> None:
    log = Log()
    assert log.ok(Increment("c"))["value"] == 1
    assert log.ok(Increment("c", by=-11))["value"] == -10
    for v in ("x", 1.5, True, None, [1]):
        log.ok(SetKey("w", v))
        e = log.err(Increment("w"))
        assert e.code == p.WRONG_TYPE and "'w'" in e.message
    log.ok(SetKey("big", 2**63 - 2))
    assert log.ok(Increment("big"))["value"] == 2**63 - 1
    e = log.err(Increment("big"))
    assert e.code == p.OVERFLOW and "64-bit" in e.message
    rec = log.sm.get("big", T0)
    assert rec is not None and rec.value == 2**63 - 1  # unchanged
    log.ok(SetKey("small", -(2**63)))
    assert log.err(Increment("small", by=-1)).code == p.OVERFLOW


def test_ttl_counts_from_the_entry_time_and_the_key_is_gone_at_expiry_exactly() -> None:
    """An expired key is gone for every operation and read from the instant of its expiry."""
    log = Log()
    out = log.ok(SetKey("t", "v", ttl_ms=1000), T0)
    assert out["expires_at"] == (T0 + 1000) / 1000
    assert log.sm.get("t", T0 + 999) is not None
    assert log.sm.get("t", T0 + 1000) is None
    # Not swept yet, yet every operation at a later entry time treats it as absent:
    assert log.ok(SetKey("t", "new", if_absent=True), T0 + 1000)["created"] is True
    log.ok(SetKey("u", 5, expires_at_ms=T0 + 500))
    assert log.ok(Increment("u"), T0 + 500)["value"] == 1  # expired: counts from 0 again
    log.ok(SetKey("d", 1, ttl_ms=10), T0 + 1000)
    assert log.ok(DeleteKey("d"), T0 + 1010) == {"deleted": False}


def test_increment_keeps_the_expiry_unless_given_one() -> None:
    log = Log()
    log.ok(Increment("c", ttl_ms=1000), T0)
    assert log.ok(Increment("c"), T0 + 100)["expires_at"] == (T0 + 1000) / 1000
    assert log.ok(Increment("c", ttl_ms=5000), T0 + 200)["expires_at"] == (T0 + 5200) / 1000
    log.ok(SetKey("c", 7), T0 + 300)  # a set without ttl makes it permanent
    assert log.ok(Increment("c"), T0 + 400)["expires_at"] is None


def test_sweep_rechecks_expiry_at_its_own_entry_time() -> None:
    """The leader's sweep carries names, not a clock: apply removes a name only if it has expired
    at the sweep entry's time — a key re-set meanwhile stays."""
    log = Log()
    log.ok(SetKey("a", 1, ttl_ms=100), T0)
    log.ok(SetKey("b", 1, ttl_ms=100), T0)
    log.ok(SetKey("keep", 1), T0)
    due = log.sm.due(T0 + 100, 10)
    assert due == Expire(("a", "b"))
    log.ok(SetKey("b", 2, ttl_ms=1000), T0 + 50)  # renewed before the sweep applies
    assert due is not None
    assert log.ok(due, T0 + 100) == {"keys": 1, "locks": 0, "sessions": 0}
    assert log.sm.keys.names() == ["b", "keep"]
    assert log.sm.due(T0 + 100, 10) is None
    assert log.sm.due(T0 + 1050, 10) == Expire(("b",))


def test_listing_is_sorted_paged_by_prefix_and_skips_expired_keys() -> None:
    log = Log()
    for k in ["job:3", "job:1", "other", "job:2", "job:4", "jo"]:
        log.ok(SetKey(k, 0))
    log.ok(SetKey("job:25", 0, ttl_ms=10))
    now = T0 + 10
    assert log.sm.list_keys("job:", None, 2, now) == (["job:1", "job:2"], "job:2")
    assert log.sm.list_keys("job:", "job:2", 2, now) == (["job:3", "job:4"], None)
    assert log.sm.list_keys("", None, 100, now) == (["jo", "job:1", "job:2", "job:3", "job:4", "other"], None)
    assert log.sm.list_keys("job:", "job:4", 5, now) == ([], None)
    assert log.sm.list_keys("zzz", None, 5, now) == ([], None)


# =========================================================================== locks


def test_acquire_returns_the_log_index_as_token_and_refuses_a_held_lock() -> None:
    log = Log()
    log.ok(SetKey("x", 0))
    assert log.ok(AcquireLock("L", "w1", 1000), T0) == {"token": 2, "expires_at": (T0 + 1000) / 1000}
    for owner in ("w2", "w1"):  # not re-entrant: the same owner string is no proof of identity
        e = log.err(AcquireLock("L", owner, 1000), T0 + 999)
        assert e.code == p.LOCK_HELD
        assert e.fields == {"name": "L", "owner": "w1", "expires_at": (T0 + 1000) / 1000}
    lk = log.sm.lock("L", T0 + 999)
    assert lk is not None and (lk.owner, lk.token) == ("w1", 2)


def test_a_lock_is_free_exactly_at_its_expiry_in_cluster_time() -> None:
    """A lock is granted only if the previous lease has ended at the acquiring entry's time."""
    log = Log()
    t1 = log.ok(AcquireLock("L", "w1", 1000), T0)["token"]
    assert log.err(AcquireLock("L", "w2", 1000), T0 + 999).code == p.LOCK_HELD
    t2 = log.ok(AcquireLock("L", "w2", 1000), T0 + 1000)["token"]
    assert t2 > t1
    assert log.sm.lock("L", T0 + 1999) is not None and log.sm.lock("L", T0 + 2000) is None


def test_renew_extends_from_the_entry_time_only_for_the_current_token() -> None:
    log = Log()
    tok = log.ok(AcquireLock("L", "w1", 1000), T0)["token"]
    assert log.ok(RenewLock("L", tok), T0 + 600) == {"expires_at": (T0 + 1600) / 1000}
    assert log.ok(RenewLock("L", tok, ttl_ms=3000), T0 + 700) == {"expires_at": (T0 + 3700) / 1000}
    assert log.ok(RenewLock("L", tok), T0 + 800) == {"expires_at": (T0 + 3800) / 1000}  # new default
    e = log.err(RenewLock("L", tok + 100), T0 + 900)
    assert e.code == p.LOCK_LOST and "held by 'w1'" in e.message
    # After expiry the right token no longer holds it either, swept or not.
    e = log.err(RenewLock("L", tok), T0 + 3800)
    assert e.code == p.LOCK_LOST and "free" in e.message


def test_release_frees_the_lock_once_and_never_someone_elses() -> None:
    log = Log()
    t1 = log.ok(AcquireLock("L", "w1", 1000), T0)["token"]
    assert log.ok(ReleaseLock("L", t1)) == {"released": True}
    assert log.ok(ReleaseLock("L", t1)) == {"released": False}
    t2 = log.ok(AcquireLock("L", "w2", 1000))["token"]
    assert log.err(ReleaseLock("L", t1)).code == p.LOCK_LOST
    assert log.sm.lock("L", T0) is not None
    assert log.ok(ReleaseLock("L", t2)) == {"released": True}


def test_a_fenced_write_from_an_expired_holder_is_refused() -> None:
    """A holder paused past its TTL comes back to find its fenced writes refused."""
    log = Log()
    t1 = log.ok(AcquireLock("L", "w1", 1000), T0)["token"]
    assert log.ok(SetKey("k", "by w1"), T0 + 500, fence=Fence("L", t1))["version"] > 0
    e = log.err(SetKey("k", "late w1"), T0 + 1000, fence=Fence("L", t1))  # expired, nobody else yet
    assert e.code == p.LOCK_LOST and e.fields["key"] == "k"
    t2 = log.ok(AcquireLock("L", "w2", 1000), T0 + 1200)["token"]
    for op in (SetKey("k", "late w1"), DeleteKey("k"), Increment("k")):
        assert log.err(op, T0 + 1300, fence=Fence("L", t1)).code == p.LOCK_LOST
    assert log.ok(SetKey("k", "by w2"), T0 + 1300, fence=Fence("L", t2))["created"] is False
    rec = log.sm.get("k", T0 + 1300)
    assert rec is not None and rec.value == "by w2"


# =========================================================================== sessions


def _session(log: Log, t: int = T0, idle_ms: int = 10_000, cap: int = 100) -> int:
    out = log.ok(OpenSession(idle_ms, cap), t)
    assert out == {"session": log.index, "idle_timeout_s": idle_ms / 1000}
    sid: int = out["session"]
    return sid


def test_a_retried_write_returns_its_first_outcome_and_is_not_applied_again() -> None:
    log = Log()
    sid = _session(log)
    first = log.ok(Increment("c"), session=SessionRef(sid, 1))
    again = log.ok(Increment("c"), session=SessionRef(sid, 1))
    assert first == again == {"value": 1, "version": first["version"], "expires_at": None}
    rec = log.sm.get("c", T0)
    assert rec is not None and rec.value == 1 and rec.version == first["version"]
    assert log.ok(Increment("c"), session=SessionRef(sid, 2))["value"] == 2


def test_a_refusal_is_an_outcome_too() -> None:
    """The first outcome of (session, seq) is final, also when it was a refusal."""
    log = Log()
    sid = _session(log)
    log.ok(SetKey("k", 1))
    e = log.err(SetKey("k", 2, if_version=99), session=SessionRef(sid, 1))
    log.ok(SetKey("k", 3))  # now at a version that would match... not that it matters
    assert log.err(SetKey("k", 2, if_version=99), session=SessionRef(sid, 1)) == e


def test_ack_forgets_outcomes_and_forgotten_seqs_are_refused() -> None:
    log = Log()
    sid = _session(log)
    for seq in (1, 2, 3):
        log.ok(Increment("c"), session=SessionRef(sid, seq))
    log.ok(Increment("c"), session=SessionRef(sid, 4, ack=2))
    assert sorted(log.sm.sessions.sessions[sid].results) == [3, 4]
    e = log.err(Increment("c"), session=SessionRef(sid, 2))
    assert e.code == p.INVALID_REQUEST and "forgotten" in e.message
    assert log.ok(Increment("c"), session=SessionRef(sid, 3))["value"] == 3  # still remembered
    rec = log.sm.get("c", T0)
    assert rec is not None and rec.value == 4


def test_the_remembered_outcomes_per_session_are_capped() -> None:
    log = Log()
    sid = _session(log, cap=3)
    for seq in (1, 2, 3):
        log.ok(Increment("c"), session=SessionRef(sid, seq))
    before = state_rows(log.sm)
    e = log.err(Increment("c"), session=SessionRef(sid, 4))
    assert e.code == p.INVALID_REQUEST and "limit is 3" in e.message and "ack" in e.message
    assert state_rows(log.sm) == before  # refused: nothing applied, nothing remembered
    assert log.ok(Increment("c"), session=SessionRef(sid, 4, ack=1))["value"] == 4


def test_an_idle_session_expires_in_cluster_time_and_its_writes_are_refused() -> None:
    log = Log()
    sid = _session(log, T0, idle_ms=1000)
    log.ok(Increment("c"), T0 + 900, session=SessionRef(sid, 1))  # activity extends it
    assert log.ok(KeepAlive(sid), T0 + 1800) == {"ok": True}
    before = state_rows(log.sm)
    e = log.err(Increment("c"), T0 + 2800, session=SessionRef(sid, 2))
    assert e.code == p.SESSION_EXPIRED and f"session {sid}" in e.message and "NOT applied" in e.message
    # Even the replay of a remembered outcome is refused once the session has expired.
    assert log.err(Increment("c"), T0 + 2800, session=SessionRef(sid, 1)).code == p.SESSION_EXPIRED
    assert log.err(KeepAlive(sid), T0 + 2800).code == p.SESSION_EXPIRED
    assert state_rows(log.sm) == before
    assert log.err(KeepAlive(12345)).code == p.SESSION_EXPIRED
    assert log.ok(Expire(sessions=(sid,)), T0 + 2800)["sessions"] == 1


def test_sessions_and_their_outcomes_survive_a_snapshot_restore() -> None:
    log = Log()
    sid = _session(log)
    first = log.ok(Increment("c"), session=SessionRef(sid, 1))
    restored = KVStateMachine()
    restored.restore(log.sm.snapshot())
    log2 = Log(restored)
    assert log2.ok(Increment("c"), session=SessionRef(sid, 1)) == first
    rec = restored.get("c")
    assert rec is not None and rec.value == 1


# =========================================================================== malformed commands


BAD_COMMANDS: list[tuple[bytes, str]] = [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2]), "must be a map"),
    (encode_command("nope", key="a"), "unknown operation"),
    (encode_command("set", key=1, value=2), "key must be"),
    (encode_command("set", key="a"), "missing field 'value'"),
    (encode_command("set", key="a", value=1, ttl_ms=0), "ttl_ms must be"),
    (encode_command("set", key="a", value=1, ttl_ms=5, expires_at_ms=9), "not both"),
    (encode_command("set", key="a", value=1, colour="red"), "unknown field"),
    (encode_command("incr", key="a", by=2**63), "by must be"),
    (encode_command("incr", key="a", by=True), "by must be"),
    (encode_command("lock_acquire", name="L", owner="o", ttl_ms=10, fence_lock="L", fence_token=1), "fenced"),
    (encode_command("set", key="a", value=1, fence_lock="L"), "both the lock name and the token"),
    (encode_command("set", key="a", value=1, session=1), "both session and seq"),
    (encode_command("set", key="a", value=1, session=1, seq=2, ack=2), "below seq"),
    (encode_command("session_open", idle_timeout_ms=1, max_results=1, session=1, seq=1), "cannot carry"),
    (encode_command("expire", keys="abc"), "list of strings"),
]


@pytest.mark.parametrize(("data", "why"), BAD_COMMANDS)
def test_a_malformed_command_is_refused_deterministically_and_changes_nothing(data: bytes, why: str) -> None:
    log = Log()
    log.ok(SetKey("a", 1))
    log.ok(AcquireLock("L", "o", 1000))
    before = state_rows(log.sm)
    out = log.raw(data)
    assert isinstance(out, Refusal) and out.code == p.INVALID_REQUEST
    assert why in out.message
    assert state_rows(log.sm) == before
    assert log.sm.applied_index == log.index  # the entry still counts as applied


@given(st.binary(max_size=64))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_apply_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    sm = KVStateMachine()
    out = sm.apply(1, T0, data)
    assert isinstance(out, dict | Refusal)


def test_the_encoder_refuses_what_apply_would_refuse() -> None:
    """The API cannot propose garbage: encode() runs the same validation as decode()."""
    with pytest.raises(Refusal, match="ttl_ms"):
        encode(Command(SetKey("a", 1, ttl_ms=-5)))
    with pytest.raises(Refusal, match="cannot be encoded"):
        encode(Command(SetKey("a", 2**70)))
    with pytest.raises(Refusal, match="only writes to keys"):
        encode(Command(AcquireLock("L", "o", 10), fence=Fence("L", 1)))
    cmd = Command(SetKey("a", {"x": [1, b"\x00"]}, ttl_ms=5), SessionRef(3, 4, 2), Fence("L", 9))
    assert decode(encode(cmd)) == cmd
    assert decode(encode_command("set", key="a", value=None)) == Command(SetKey("a", None))


def test_a_log_of_the_node_issue_format_still_applies() -> None:
    """Entries written before this change ({"op": "set"|"delete", "key", "value"}) keep their meaning."""
    log = Log()
    assert log.raw(encode_command("set", key="a", value=1)) == {
        "version": 1,
        "created": True,
        "expires_at": None,
    }
    assert log.raw(encode_command("delete", key="a")) == {"deleted": True}


# =========================================================================== snapshots


def test_a_snapshot_of_the_node_issue_format_restores() -> None:
    old = msgpack.packb({"applied_index": 7, "time_ms": T0, "data": [["a", 1, 3], ["b", "x", 7]]})
    sm = KVStateMachine()
    sm.restore(old)
    assert (sm.applied_index, sm.time_ms) == (7, T0)
    rec = sm.get("b")
    assert rec is not None and (rec.value, rec.version) == ("x", 7)


def test_expiry_index_stays_bounded_when_a_lock_is_renewed_forever() -> None:
    log = Log()
    token = log.ok(AcquireLock("L", "me", ttl_ms=1_000_000), T0)["token"]
    for i in range(5000):
        log.ok(RenewLock("L", token), T0 + i)
    idx: ExpiryIndex[str] = log.sm.locks._expiry
    assert len(idx) <= 2 * 1 + 1024 + 1
    assert log.sm.due(T0 + 1_005_000, 10) == Expire((), ("L",))


def test_a_key_rewritten_forever_is_due_once_at_its_last_expiry() -> None:
    log = Log()
    for i in range(500):
        log.ok(SetKey("k", i, ttl_ms=1_000_000), T0 + i)
    assert log.sm.due(T0 + 1_000_498, 10) is None
    assert log.sm.due(T0 + 1_000_499, 10) == Expire(("k",))


# Random operation sequences. Small name spaces so that operations collide; times advance by random
# steps so that keys, locks and sessions expire in between.
_keys = st.sampled_from(["a", "b", "c", "job:1", "job:2"])
_locks = st.sampled_from(["L1", "L2"])
_ttl = st.one_of(st.none(), st.integers(1, 3000))
_token = st.integers(1, 60)


def _op_strategy() -> st.SearchStrategy[Any]:
    value = st.one_of(
        st.integers(-5, 5), st.text(max_size=3), st.none(), st.lists(st.integers(0, 3), max_size=2)
    )
    return st.one_of(
        st.builds(SetKey, _keys, value, _ttl, st.none(), st.booleans(), st.none()),
        st.builds(SetKey, _keys, value, st.none(), st.none(), st.just(False), st.integers(1, 60)),
        st.builds(DeleteKey, _keys, st.one_of(st.none(), st.integers(1, 60))),
        st.builds(Increment, _keys, st.integers(-3, 3), _ttl),
        st.builds(AcquireLock, _locks, st.sampled_from(["w1", "w2"]), st.integers(1, 3000)),
        st.builds(RenewLock, _locks, _token, _ttl),
        st.builds(ReleaseLock, _locks, _token),
        st.builds(OpenSession, st.integers(1000, 20_000), st.integers(1, 4)),
        st.builds(KeepAlive, st.integers(1, 60)),
        st.just("sweep"),
    )


_steps = st.lists(
    st.tuples(
        _op_strategy(),
        st.one_of(st.integers(0, 200), st.integers(0, 3000)),  # time step (ms): mostly short
        st.one_of(st.none(), st.tuples(st.integers(1, 60), st.integers(1, 6), st.integers(0, 5))),
        st.one_of(st.none(), st.tuples(_locks, _token)),
    ),
    min_size=1,
    max_size=60,
)


def _commands(steps: list[Any]) -> list[tuple[int, bytes]]:
    """(time_ms, bytes) per entry; invalid combinations become refused entries, as in a real log.
    Session ids and tokens mostly name live ones (drawn numbers pick among them), so that the
    interesting paths — replays, acks, renewals, fenced writes — are taken often."""
    out: list[tuple[int, bytes]] = []
    t = T0
    shadow = KVStateMachine()  # what the log says so far: to pick live names and the sweep lists

    def token(name: str, drawn: int) -> int:
        lk = shadow.locks.held(name, t)
        return lk.token if lk is not None and drawn % 4 != 0 else drawn

    def session(drawn: int) -> int:
        ids = [sid for sid in sorted(shadow.sessions.sessions) if shadow.sessions.live(sid, t)]
        return ids[drawn % len(ids)] if ids and drawn % 5 != 0 else drawn

    for i, (op, dt, sess, fence) in enumerate(steps, start=1):
        t += dt
        if op == "sweep":
            due = shadow.due(t, 10)
            cmd = Command(due if due is not None else Expire())
        else:
            if isinstance(op, RenewLock | ReleaseLock):
                op = type(op)(
                    op.name, token(op.name, op.token), *([op.ttl_ms] if isinstance(op, RenewLock) else [])
                )
            if isinstance(op, KeepAlive):
                op = KeepAlive(session(op.id))
            ref = SessionRef(session(sess[0]), sess[1], min(sess[2], sess[1] - 1)) if sess else None
            f = None
            if fence and isinstance(op, SetKey | DeleteKey | Increment):
                f = Fence(fence[0], token(fence[0], fence[1]))
            if isinstance(op, OpenSession | KeepAlive):
                ref = None
            cmd = Command(op, ref, f)
        data = encode(cmd)
        shadow.apply(i, t, data)
        out.append((t, data))
    return out


@given(_steps, st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_replicas_agree_and_snapshot_restore_equals_continuous_apply(
    steps: list[Any], data: st.DataObject
) -> None:
    """Two replicas applying the same log produce the same outcomes and byte-identical snapshots;
    a replica restored from a snapshot taken mid-log and applying the rest ends byte-identical to
    one that applied the whole log (sessions, locks, expiries, versions, time — everything)."""
    entries = _commands(steps)
    cut = data.draw(st.integers(0, len(entries)), label="snapshot after entry")
    a, b = KVStateMachine(), KVStateMachine()
    outs_a, outs_b = [], []
    for i, (t, d) in enumerate(entries, start=1):
        outs_a.append(a.apply(i, t, d))
        outs_b.append(b.apply(i, t, d))
        if i == cut:
            snap = b.snapshot()
            b = KVStateMachine()
            b.restore(snap)
            assert b.snapshot() == snap
    assert outs_a == outs_b
    assert a.snapshot() == b.snapshot()
    for o in outs_a:
        assert isinstance(o, dict | Refusal)
        assert not (isinstance(o, Refusal) and o.code == p.INTERNAL), o
