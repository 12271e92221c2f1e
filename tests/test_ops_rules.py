"""Day-2 operations without processes: the backup file format, membership refusals, the join and
wiped-voter decisions, the bootstrap record. Each guard is shown refusing a known-bad case."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from raftstate.client import protocol as p
from raftstate.node.config import ClusterConfig, ConfigError, NodeConfig, Settings
from raftstate.node.errors import Refusal
from raftstate.node.ops.backup_file import MAGIC, BackupError, BackupHeader, read_backup, stream_backup
from raftstate.node.ops.backup_restore import describe, restore
from raftstate.node.ops.backup_state import SnapshotMovedOn, backup_payload, decode_payload, rebuild_state
from raftstate.node.peers.bootstrap import read_record, resolve_bootstrap
from raftstate.node.peers.join import JoinRefused, plan_join, wiped_voter_problem
from raftstate.node.peers.membership import check_add, check_promote, check_remove, reachable
from raftstate.node.peers.peer_memory import HeardFrom
from raftstate.node.state.commands import AcquireLock, Command, SetKey, encode
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.storage.store import DiskStorage, MemoryStorage
from raftstate.raft import Entry, EntryKind, Membership, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall

# ----------------------------------------------------------------------------- backup file


def _payload() -> bytes:
    """A leader's backup data: its snapshot at index 2 and the entry at 3 after it."""
    sm = KVStateMachine()
    sm.apply(1, 1_000, encode(Command(SetKey("a", 1))))
    sm.apply(2, 1_000, encode(Command(SetKey("b", {"x": 2}))))
    storage = MemoryStorage()
    meta = SnapshotMeta(2, 2, Membership(voters=frozenset({"n1"})), 1_000)
    storage.save(None, [], SnapshotToInstall(meta, sm.snapshot()))
    lock = Entry(3, 2, 1_000, EntryKind.NORMAL, encode(Command(AcquireLock("L", "w", 60_000))))
    data, time_ms, base = backup_payload(storage, [lock], 3)
    assert (time_ms, base) == (1_000, 2)
    return data


def _write_backup(path: Path, data: bytes, cluster_id: str = "old") -> BackupHeader:
    header = BackupHeader(
        cluster_id=cluster_id,
        index=3,
        term=2,
        time_ms=1_000,
        base_index=2,
        data_bytes=len(data),
        data_sha256=hashlib.sha256(data).hexdigest(),
        node="n1",
        created_at=0.0,
    )
    path.write_bytes(b"".join(stream_backup(header, data)))
    return header


def test_backup_round_trip_and_inspect(tmp_path: Path) -> None:
    f = tmp_path / "b.rsb"
    data = _payload()
    header = _write_backup(f, data)
    got, body = read_backup(f)
    assert got == header and body == data
    _, counts = describe(f)
    assert counts == {"keys": 2, "locks": 1, "sessions": 0}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[: len(MAGIC) + 2], "not a raftstate backup file"),
        (lambda b: b[:60], "truncated"),
        (lambda b: b + b"x", "trailing bytes"),
        (lambda b: b"NOPE" + b[4:], "not a raftstate backup file"),
        (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:], "checksum mismatch in the data section"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch in the file trailer"),
        (lambda b: MAGIC + struct.pack(">I", 1 << 30) + b[len(MAGIC) + 4 :], "header length"),
    ],
)
def test_a_damaged_backup_is_refused_precisely(tmp_path: Path, damage: Any, message: str) -> None:
    f = tmp_path / "b.rsb"
    _write_backup(f, _payload())
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(BackupError, match=message) as err:
        read_backup(f)
    assert str(f) in str(err.value)


def test_a_missing_backup_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="cannot read"):
        read_backup(tmp_path / "nope.rsb")


def _config(tmp_path: Path, cluster_id: str = "new", n: int = 3) -> ClusterConfig:
    nodes = tuple(NodeConfig(f"n{i}", f"127.0.0.1:{7100 + i}", tmp_path / f"n{i}") for i in range(1, n + 1))
    return ClusterConfig(tmp_path / "new.yaml", cluster_id, nodes, Settings())


def test_restore_seeds_every_data_dir_with_the_backup_as_a_snapshot(tmp_path: Path) -> None:
    f = tmp_path / "b.rsb"
    _write_backup(f, _payload())
    cfg = _config(tmp_path)
    assert len(restore(f, cfg)) == 3
    for n in cfg.nodes:
        with DiskStorage(n.data_dir, node_id=n.id, cluster_id="new") as s:
            loaded = s.load()
        snap = loaded.persisted.snapshot
        assert snap is not None and (snap.index, snap.term, snap.time_ms) == (3, 2, 1_000)
        assert snap.membership.voters == {"n1", "n2", "n3"}
        assert loaded.snapshot_data is not None
        sm = KVStateMachine()
        sm.restore(loaded.snapshot_data)
        assert sm.applied_index == 3 and sm.get("b") is not None and sm.lock("L", 1_000) is not None
        assert loaded.persisted.hard_state.term == 2 and loaded.persisted.hard_state.vote is None
        rec = read_record(n.data_dir)
        assert rec is not None and rec.cluster_id == "new" and rec.membership.voters == {"n1", "n2", "n3"}


def test_restore_refuses_the_old_cluster_id_a_used_data_dir_and_a_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "b.rsb"
    _write_backup(f, _payload(), cluster_id="old")
    with pytest.raises(BackupError, match="new cluster_id"):
        restore(f, _config(tmp_path, cluster_id="old"))
    cfg = _config(tmp_path)
    cfg.nodes[1].data_dir.mkdir()
    (cfg.nodes[1].data_dir / "something").write_text("x")
    with pytest.raises(BackupError, match=r"n2's data dir .* is not empty"):
        restore(f, cfg)
    assert not cfg.nodes[0].data_dir.exists()  # nothing seeded when any node is refused
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(BackupError, match="truncated"):
        restore(f, _config(tmp_path / "x"))


# ----------------------------------------------------------------------------- membership rules

M3 = Membership(
    voters=frozenset({"n1", "n2", "n3"}),
    learners=frozenset({"n4"}),
    addresses=(("n1", "h:1"), ("n2", "h:2"), ("n3", "h:3"), ("n4", "h:4")),
)


def _refused(code: str, fn: Any, *args: Any) -> str:
    with pytest.raises(Refusal) as err:
        fn(*args)
    assert err.value.code == code and p.STATUS_OF[code] == err.value.status
    return err.value.message


def test_add_refuses_an_existing_id_or_address() -> None:
    assert "remove --id n2" in _refused(p.MEMBER_EXISTS, check_add, M3, "n2", "h:9")
    assert "learner" in _refused(p.MEMBER_EXISTS, check_add, M3, "n4", "h:9")
    assert "used by member n3" in _refused(p.MEMBER_EXISTS, check_add, M3, "n5", "h:3")
    check_add(M3, "n5", "h:5")


def test_remove_refuses_to_leave_no_reachable_quorum() -> None:
    up = reachable(M3, "n1", {"n2": 50, "n3": 5_000}, window_ms=500)
    assert up == {"n1", "n2"}
    # {n1, n3} would need both; n3 is down.
    msg = _refused(p.QUORUM_UNREACHABLE, check_remove, M3, "n2", up)
    assert "['n1']" in msg and "needing 2" in msg
    check_remove(M3, "n3", up)  # removing the down voter is what the operator should do
    check_remove(M3, "n4", set())  # a learner never counts
    _refused(p.NOT_FOUND, check_remove, M3, "n9", up)
    _refused(p.QUORUM_UNREACHABLE, check_remove, Membership(voters=frozenset({"n1"})), "n1", {"n1"})


def test_promote_needs_a_caught_up_answering_learner_and_a_quorum() -> None:
    up = {"n1", "n2", "n3", "n4"}
    assert "not answered" in _refused(p.NOT_CAUGHT_UP, check_promote, M3, "n4", 0, 50, 256, up)
    assert "not answered" in _refused(p.NOT_CAUGHT_UP, check_promote, M3, "n4", 90, 10, 256, up - {"n4"})
    assert "1000 entries behind" in _refused(p.NOT_CAUGHT_UP, check_promote, M3, "n4", 90, 1000, 256, up)
    # 4 voters need 3 answering; only n1 and n4 do.
    _refused(p.QUORUM_UNREACHABLE, check_promote, M3, "n4", 90, 0, 256, {"n1", "n4"})
    _refused(p.MEMBER_EXISTS, check_promote, M3, "n2", 90, 0, 256, up)
    _refused(p.NOT_FOUND, check_promote, M3, "n7", 90, 0, 256, up)
    check_promote(M3, "n4", 90, 3, 256, up)


# ----------------------------------------------------------------------------- join decisions


def _doc(
    m: Membership, match: dict[str, int] | None = None, heard: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "cluster_id": "c1",
        "commit_index": 10,
        "members": [
            {
                "id": n,
                "address": m.address_of(n),
                "role": "voter" if n in m.voters else "learner",
                "match": (match or {}).get(n),
            }
            for n in sorted(m.members)
        ],
        "heard_from": sorted(heard or {}),
    }


def test_join_refuses_a_voter_a_moved_learner_and_an_old_incarnation() -> None:
    with pytest.raises(JoinRefused, match=r"already a voter.*member remove --id n2"):
        plan_join(_doc(M3), "n2", "h:2", "h:1")
    with pytest.raises(JoinRefused, match="at h:4, not h:8"):
        plan_join(_doc(M3), "n4", "h:8", "h:1")
    with pytest.raises(JoinRefused, match="replicated to learner n4 up to index 7"):
        plan_join(_doc(M3, match={"n4": 7}), "n4", "h:4", "h:1")
    with pytest.raises(JoinRefused, match="already member n1's"):
        plan_join(_doc(M3), "n5", "h:1", "h:1")


def test_join_waits_for_an_unknown_id_and_goes_on_for_a_fresh_learner() -> None:
    plan = plan_join(_doc(M3), "n5", "h:5", "h:1")
    assert (
        plan.membership == M3
        and plan.waiting_hint
        and "member add --id n5 --address h:5" in plan.waiting_hint
    )
    assert "n5" not in plan.membership.voters  # it cannot campaign until promoted
    plan = plan_join(_doc(M3, match={"n4": 0}), "n4", "h:4", "h:1")
    assert plan.waiting_hint is None


def test_empty_data_dir_of_a_known_voter_is_refused_but_a_first_start_is_not() -> None:
    assert wiped_voter_problem({"n1": _doc(M3)}, "n2") is None  # nobody heard from n2: new cluster
    problem = wiped_voter_problem({"n1": _doc(M3, heard={"n2": 300})}, "n2")
    assert problem is not None and "member remove --id n2" in problem and "--join h:1" in problem
    gone = Membership(voters=frozenset({"n1", "n3"}), addresses=(("n1", "h:1"), ("n3", "h:3")))
    problem = wiped_voter_problem({"n1": _doc(gone)}, "n2")
    assert problem is not None and "no longer a member" in problem


# ----------------------------------------------------------------------------- bootstrap record


def test_cluster_yaml_is_read_once_then_the_record_rules(tmp_path: Path, caplog: Any) -> None:
    cfg = _config(tmp_path, n=3)
    d = tmp_path / "dir"
    first = resolve_bootstrap(d, "n1", cfg, None)
    assert first.voters == {"n1", "n2", "n3"}
    edited = _config(tmp_path, n=4)  # cluster.yaml grew a node after bootstrap
    assert resolve_bootstrap(d, "n1", edited, None) == first
    assert "only read at a node's first start" in caplog.text
    with pytest.raises(ConfigError, match="belongs to node n1"):
        resolve_bootstrap(d, "n2", cfg, None)
    (d / "bootstrap.json").write_text("{")
    with pytest.raises(ConfigError, match="unreadable bootstrap record"):
        read_record(d)


# ----------------------------------------------------------------------------- backup state


def _entries(n: int) -> list[Entry]:
    out = [Entry(1, 1, 500, EntryKind.NORMAL, b"")]  # a leader's no-op
    for i in range(2, n + 1):
        cmd = Command(SetKey(f"k{i % 7}", i)) if i % 5 else Command(AcquireLock(f"L{i}", "w", 60_000))
        out.append(Entry(i, 1, 1_000 + i, EntryKind.NORMAL, encode(cmd)))
    return out


def test_backup_state_is_the_stored_snapshot_plus_the_log_replayed() -> None:
    log = _entries(40)
    live = KVStateMachine()
    at_25 = b""
    for e in log:
        live.apply(e.index, e.time_ms, e.data) if e.data else live.advance_to(e.index, e.time_ms)
        if e.index == 25:
            at_25 = live.snapshot()
    storage = MemoryStorage()
    data, time_ms, base = backup_payload(storage, log[:30], 30)  # no snapshot yet: from the start
    assert base == 0 and time_ms == 1_030
    assert rebuild_state(*decode_payload(data), 30).snapshot() == _replayed(log[:30]).snapshot()
    meta = SnapshotMeta(25, 1, Membership(voters=frozenset({"n1"})), 1_025)
    storage.save(None, [], SnapshotToInstall(meta, at_25))
    # The in-memory log may still start before the stored snapshot (compacted after it is stored).
    for tail in (log[20:40], log[25:40]):
        data, _, base = backup_payload(storage, tail, 40)
        assert base == 25 and len(decode_payload(data)[2]) == 15  # only what the snapshot lacks
        assert rebuild_state(*decode_payload(data), 40).snapshot() == live.snapshot()
    with pytest.raises(SnapshotMovedOn):
        backup_payload(storage, log[10:20], 20)  # the snapshot is past the point: take a new one
    with pytest.raises(SnapshotMovedOn, match="neither in the log nor the snapshot"):
        backup_payload(storage, log[30:40], 40)  # a gap 26..30: never guess
    with pytest.raises(ValueError, match="not 24"):
        rebuild_state(24, at_25, log[24:40], 40)  # a snapshot that is not where it claims


def _replayed(entries: list[Entry]) -> KVStateMachine:
    sm = KVStateMachine()
    for e in entries:
        sm.apply(e.index, e.time_ms, e.data) if e.data else sm.advance_to(e.index, e.time_ms)
    return sm


# ----------------------------------------------------------------------------- peer memory


def test_heard_from_survives_a_restart(tmp_path: Path) -> None:
    import asyncio

    seen: list[str] = ["n2"]
    memory = HeardFrom(tmp_path, lambda: seen)
    asyncio.run(memory.flush())
    seen[:] = ["n3"]  # a new process: its contact table starts empty
    again = HeardFrom(tmp_path, lambda: seen)
    assert again.ids() == {"n2", "n3"}
    (tmp_path / "heard_from.json").write_text("{")
    assert HeardFrom(tmp_path, lambda: []).ids() == set()  # unreadable: warns, starts again
