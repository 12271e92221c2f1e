"""History (node/state/history.py, docs/watch.md): apply records one event per visible change, in
the same transaction, with the entry's index as its revision; refused commands and retries
answered from a session record none; reads are bounded and never split a revision; retention
prunes whole revisions; an old store gets the table when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack

from raftstate.node.state.commands import (
    AcquireLock,
    Command,
    DeleteKey,
    Expire,
    Fence,
    Increment,
    OpenSession,
    Operation,
    ReleaseLock,
    RenewLock,
    SessionRef,
    SetKey,
    encode,
)
from raftstate.node.state.history import Event, body_of, put_body
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.tables import StateTables

T0 = 1_700_000_000_000


class Log:
    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm or KVStateMachine()
        self.index = self.sm.applied_index

    def do(
        self, op: Operation, t: int = T0, *, session: SessionRef | None = None, fence: Fence | None = None
    ) -> Any:
        self.index += 1
        return self.sm.apply(self.index, t, encode(Command(op, session, fence)))

    def noop(self, t: int = T0) -> None:
        self.index += 1
        self.sm.advance_to(self.index, t)


def events(sm: KVStateMachine) -> list[dict[str, Any]]:
    return [ev.wire() for ev in sm.history.scan_all()]


def test_put_delete_increment_each_make_one_event_with_the_entry_index_as_revision() -> None:
    log = Log()
    log.do(SetKey("a", {"n": 1}))
    log.do(SetKey("b", 2, ttl_ms=5000), t=T0 + 10)
    log.do(Increment("c", 5))
    log.do(DeleteKey("a"))
    assert events(log.sm) == [
        {"type": "put", "key": "a", "revision": 1, "value": {"n": 1}, "version": 1, "expires_at": None},
        {"type": "put", "key": "b", "revision": 2, "value": 2, "version": 2, "expires_at": T0 + 5010},
        {"type": "put", "key": "c", "revision": 3, "value": 5, "version": 3, "expires_at": None},
        {"type": "delete", "key": "a", "revision": 4},
    ]


def test_refused_commands_and_no_change_writes_make_no_event() -> None:
    log = Log()
    log.do(SetKey("a", 1))
    before = events(log.sm)
    log.do(SetKey("a", 2, if_absent=True))  # exists: answered, nothing changed
    log.do(SetKey("a", 3, if_version=99))  # version mismatch
    log.do(DeleteKey("missing"))  # nothing to delete
    log.do(Increment("x", 1))
    log.do(SetKey("s", "text"))
    n = len(events(log.sm))
    log.do(Increment("s", 1))  # wrong type
    log.do(AcquireLock("L", "w1", 10_000))
    log.do(AcquireLock("L", "w2", 10_000))  # held
    log.do(ReleaseLock("L", 999))  # another token: lock_lost
    log.do(SetKey("k", 1), fence=Fence("L", 999))  # fenced out
    log.do(RenewLock("L", log.sm.lock("L", T0).token))  # type: ignore[union-attr]  # renewal: no event
    got = events(log.sm)
    assert got[: len(before)] == before
    assert [e["type"] for e in got[len(before) :]] == ["put", "put", "lock_acquire"]
    assert n == len(before) + 2


def test_a_retry_answered_from_its_session_makes_no_second_event() -> None:
    log = Log()
    sid = log.do(OpenSession(60_000, 100))["session"]
    first = log.do(Increment("ctr"), session=SessionRef(sid, 1))
    again = log.do(Increment("ctr"), session=SessionRef(sid, 1))
    assert first == again
    assert [(e["type"], e["key"]) for e in events(log.sm)] == [("put", "ctr")]  # sessions: none


def test_expiry_events_carry_the_sweep_entry_revision_and_its_cluster_time() -> None:
    log = Log()
    log.do(SetKey("t1", 1, ttl_ms=100))
    log.do(SetKey("t2", 2, ttl_ms=100))
    log.do(AcquireLock("L", "w", 100))
    log.do(Expire(keys=("t1", "t2", "never"), locks=("L",)), t=T0 + 500)
    sweep = [ev for ev in log.sm.history.scan_all() if ev.revision == 4]
    assert [(ev.type, ev.key, ev.seq) for ev in sweep] == [
        ("expire", "t1", 0),
        ("expire", "t2", 1),
        ("lock_expire", "L", 2),
    ]
    assert {ev.time_ms for ev in sweep} == {T0 + 500}  # stamped with the sweep entry's cluster time
    assert sweep[2].wire()["token"] == 3


def test_lock_acquire_release_expire_events() -> None:
    log = Log()
    tok = log.do(AcquireLock("L", "w1", 1000))["token"]
    log.do(ReleaseLock("L", tok))
    tok2 = log.do(AcquireLock("L", "w2", 1000))["token"]
    log.do(AcquireLock("L", "w3", 1000), t=T0 + 5000)  # w2's lease ended unswept: its end first
    assert events(log.sm) == [
        {
            "type": "lock_acquire",
            "key": "L",
            "revision": 1,
            "token": 1,
            "owner": "w1",
            "expires_at": T0 + 1000,
        },
        {"type": "lock_release", "key": "L", "revision": 2, "token": tok},
        {
            "type": "lock_acquire",
            "key": "L",
            "revision": 3,
            "token": 3,
            "owner": "w2",
            "expires_at": T0 + 1000,
        },
        {"type": "lock_expire", "key": "L", "revision": 4, "token": tok2},
        {
            "type": "lock_acquire",
            "key": "L",
            "revision": 4,
            "token": 4,
            "owner": "w3",
            "expires_at": T0 + 6000,
        },
    ]


def test_deleting_an_expired_unswept_key_is_its_expire_event() -> None:
    log = Log()
    log.do(SetKey("t", 1, ttl_ms=100))
    log.do(DeleteKey("t"), t=T0 + 1000)
    assert [e["type"] for e in events(log.sm)] == ["put", "expire"]


def test_read_filters_by_prefix_in_order_and_never_splits_a_revision() -> None:
    log = Log()
    for i in range(5):
        log.do(SetKey(f"a:{i}", i, ttl_ms=10))
        log.do(SetKey(f"b:{i}", i))
    log.do(Expire(keys=tuple(f"a:{i}" for i in range(5))), t=T0 + 100)  # 5 events at revision 11
    h = log.sm.history
    page = h.read("a:", 1, upto=11, limit=3, max_examined=1000)
    assert [ev.revision for ev in page.events] == [1, 3, 5] and page.revision == 5
    page = h.read("a:", 9, upto=11, limit=2, max_examined=1000)
    assert [(ev.revision, ev.type) for ev in page.events] == [(9, "put")] + [(11, "expire")] * 5
    assert page.revision == 11  # one revision over the limit, kept whole
    page = h.read("zzz", 1, upto=11, limit=10, max_examined=1000)
    assert page.events == [] and page.revision == 11


def test_read_examines_a_bounded_number_of_rows_and_says_how_far_it_got() -> None:
    log = Log()
    for i in range(100):
        log.do(SetKey(f"common:{i}", i))
    log.do(SetKey("rare", 1))
    h = log.sm.history
    page = h.read("rare", 1, upto=101, limit=10, max_examined=30)
    assert page.events == [] and page.revision == 30
    revision = page.revision
    while True:  # asking on from the revision answered reaches the event, without gap
        page = h.read("rare", revision + 1, upto=101, limit=10, max_examined=30)
        revision = page.revision
        if page.events:
            break
    assert [ev.key for ev in page.events] == ["rare"] and revision == 101


def test_history_is_not_part_of_the_snapshot_or_the_digest_bytes() -> None:
    a, b = Log(), Log()
    for log in (a, b):
        log.do(SetKey("k", 1))
    b.sm.history.prune_step(0, 0, 0, 100)  # b pruned its history, a did not
    assert a.sm.history.events == 1 and b.sm.history.events == 0
    assert a.sm.snapshot() == b.sm.snapshot()


def test_retention_prunes_whole_revisions_and_moves_oldest() -> None:
    log = Log()
    for i in range(10):
        log.do(SetKey(f"k{i}", i))
    log.do(Expire(), t=T0)  # an entry with nothing to expire: no event
    h = log.sm.history
    assert h.oldest == 1 and h.events == 10
    removed = h.prune_step(max_events=6, max_bytes=1 << 30, min_time_ms=0, batch_rows=3)
    assert removed == 3 and h.oldest == 4 and h.events == 7
    while h.prune_step(max_events=6, max_bytes=1 << 30, min_time_ms=0, batch_rows=3):
        pass
    assert h.events <= 6 and next(ev.revision for ev in h.scan_all()) == h.oldest
    assert h.bytes == sum(ev.size for ev in h.scan_all())


def test_retention_by_age_keeps_what_is_young_enough() -> None:
    log = Log()
    for i in range(5):
        log.do(SetKey(f"k{i}", i), t=T0 + i * 1000)
    h = log.sm.history
    while h.prune_step(max_events=100, max_bytes=1 << 30, min_time_ms=T0 + 2500, batch_rows=100):
        pass
    assert [ev.revision for ev in h.scan_all()] == [4, 5] and h.oldest == 4


def test_a_sweep_bigger_than_a_prune_batch_goes_whole() -> None:
    log = Log()
    for i in range(6):
        log.do(SetKey(f"t{i}", i, ttl_ms=1))
    log.do(Expire(keys=tuple(f"t{i}" for i in range(6))), t=T0 + 10)  # revision 7: 6 events
    log.do(SetKey("after", 1))
    h = log.sm.history
    h.prune_step(0, 1 << 30, 0, batch_rows=6)  # revisions 1..6
    assert h.oldest == 7
    h.prune_step(0, 1 << 30, 0, batch_rows=2)  # revision 7 alone is more than a batch: all of it
    assert h.oldest == 8 and [ev.key for ev in h.scan_all()] == ["after"]


def test_events_and_oldest_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    sm = KVStateMachine(StateTables(sqlite3.connect(path, check_same_thread=False)))
    log = Log(sm)
    for i in range(5):
        log.do(SetKey(f"k{i}", i))
    sm.history.prune_step(2, 1 << 30, 0, batch_rows=2)
    sm.flush()
    sm.tables.close()
    again = KVStateMachine(StateTables(sqlite3.connect(path, check_same_thread=False)))
    assert again.history.oldest == 3 and again.history.events == 3
    assert [ev.revision for ev in again.history.scan_all()] == [3, 4, 5]
    Log(again).do(SetKey("k9", 9))
    assert [ev.revision for ev in again.history.scan_all()] == [3, 4, 5, 6]


def test_a_store_from_before_history_gets_the_table_and_starts_after_its_applied_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    sm = KVStateMachine(StateTables(sqlite3.connect(path, check_same_thread=False)))
    Log(sm).do(SetKey("old", 1))
    sm.flush()
    sm.tables.close()
    # Make it an old store: no history table, no history meta.
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE history")
    conn.execute("DELETE FROM meta WHERE name LIKE 'history_%'")
    conn.commit()
    conn.close()
    up = KVStateMachine(StateTables(sqlite3.connect(path, check_same_thread=False)))
    assert up.history.oldest == 2 and up.history.events == 0
    log = Log(up)
    log.do(SetKey("new", 2))
    assert [(ev.revision, ev.key) for ev in up.history.scan_all()] == [(2, "new")]


def test_restoring_a_whole_state_snapshot_starts_history_after_it() -> None:
    src = Log()
    for i in range(4):
        src.do(SetKey(f"k{i}", i))
    dst = Log()
    dst.do(SetKey("gone", 1))
    dst.sm.restore(src.sm.snapshot())
    assert dst.sm.history.oldest == 5 and list(dst.sm.history.scan_all()) == []
    Log(dst.sm).do(SetKey("k9", 9))
    assert [ev.revision for ev in dst.sm.history.scan_all()] == [5]


def test_take_new_hands_each_event_once_in_order_once_someone_takes_them() -> None:
    log = Log()
    log.do(SetKey("before", 0))
    assert log.sm.history.take_new() == []  # nobody took events yet: none were held in memory
    log.do(SetKey("a", 1))
    log.noop()
    log.do(SetKey("b", 2))
    got = log.sm.history.take_new()
    assert [(ev.revision, ev.key) for ev in got] == [(2, "a"), (4, "b")]
    assert log.sm.history.take_new() == []
    assert isinstance(got[0], Event) and msgpack.unpackb(got[0].body)["value"] == 1


def test_the_fast_put_body_is_the_same_bytes_as_the_general_one() -> None:
    raw = msgpack.packb({"a": [1, 2]}, use_bin_type=True)
    for version, expires in ((1, None), (2**40, T0), (127, 0)):
        assert put_body(raw, version, expires) == body_of({"version": version, "expires_at": expires}, raw)


def test_replicas_applying_the_same_log_record_the_same_history() -> None:
    ops: list[tuple[Operation, int]] = [
        (SetKey("a", 1, ttl_ms=50), T0),
        (AcquireLock("L", "w", 50), T0),
        (Increment("n", 3), T0 + 1),
        (SetKey("a", 2, if_version=99), T0 + 2),  # refused
        (Expire(keys=("a",), locks=("L",)), T0 + 100),
        (DeleteKey("n"), T0 + 101),
    ]
    replicas = [Log(), Log()]
    for log in replicas:
        for op, t in ops:
            log.do(op, t)
    a, b = (list(log.sm.history.scan_all()) for log in replicas)
    assert a == b and [ev.type for ev in a] == [
        "put",
        "lock_acquire",
        "put",
        "expire",
        "lock_expire",
        "delete",
    ]
