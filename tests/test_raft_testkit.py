"""The raft test kit (raft/testing/) that the simulator, tests/raftnet.py and tests/driverfarm.py
share: the in-memory disk, the Ready driver, the partitions. Each harness trusts these; here they
are held to the contract of raft/ready.py on their own."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    Outbound,
    RaftNode,
    Ready,
    RequestVote,
    RequestVoteResp,
    SnapshotMeta,
)
from raftstate.raft.testing import (
    DiskContractError,
    MemDisk,
    ReadyDriver,
    WriteBatch,
    bridge,
    isolate,
    one_way,
    symmetric,
    torn_prefix,
)

AB = Membership(frozenset({"a", "b"}))
RAFT = Path(__file__).resolve().parent.parent / "raft"


def E(index: int, term: int, data: bytes = b"", time_ms: int = 0) -> Entry:
    return Entry(index, term, time_ms, EntryKind.NORMAL, data)


# ============================================================================ partitions


def test_partition_helpers_block_exactly_the_links_they_name() -> None:
    s = symmetric([["a"], ["b", "c"]])
    assert s.blocked == {("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")}
    o = one_way(["a"], ["b", "c"])
    assert o.blocked == {("a", "b"), ("a", "c")}  # b and c still reach a
    assert isolate("a", ["b", "c"]).blocked == s.blocked
    line = bridge(["a"], "b", ["c"])  # a - b - c
    assert line.blocked == {("a", "c"), ("c", "a")}


def test_partitions_name_one_node_by_its_id_and_combine() -> None:
    assert one_way("s1", ["s2", "s3"]).blocked == {("s1", "s2"), ("s1", "s3")}  # "s1" is one node
    both = one_way("a", "b") | isolate("c", ["d"])
    assert both.blocked == {("a", "b"), ("c", "d"), ("d", "c")}
    assert both.blocks("a", "b") and not both.blocks("b", "a")
    assert "isolate c" in both.describe


# ============================================================================ disk


def test_disk_truncates_then_appends_and_rejects_gaps() -> None:
    d = MemDisk()
    d.sync(WriteBatch(entries=[E(1, 1), E(2, 1), E(3, 1)], hard_state=HardState(1, "a", 0)))
    d.sync(WriteBatch(entries=[E(2, 2)]))  # a conflict at 2: truncate from 2, then append
    assert [(e.index, e.term) for e in d.entries] == [(1, 1), (2, 2)]
    with pytest.raises(DiskContractError):
        d.sync(WriteBatch(entries=[E(5, 2)]))
    assert d.holds(2, 2) and not d.holds(2, 1) and not d.holds(3, 1)


def test_disk_snapshots_trim_or_replace_the_log() -> None:
    d = MemDisk()
    d.sync(WriteBatch(entries=[E(i, 1) for i in range(1, 6)]))
    meta = SnapshotMeta(3, 1, Membership(frozenset({"a"})))
    d.store_snapshot(meta, b"s3", drop_log=False)  # local compaction keeps the tail
    assert [e.index for e in d.entries] == [4, 5] and d.snapshot_data(3) == b"s3"
    assert d.holds(1, 99)  # covered by the snapshot
    d.sync(WriteBatch(snapshot=(SnapshotMeta(9, 2, meta.membership), b"s9")))  # installed
    assert d.entries == [] and d.snapshot_index == 9
    ps = d.persisted_state()
    assert ps.snapshot is not None and ps.snapshot.index == 9 and ps.entries == ()


def test_torn_batch_keeps_a_prefix_in_contract_order() -> None:
    b = WriteBatch(
        snapshot=(SnapshotMeta(2, 1, Membership()), b""),
        entries=[E(3, 1), E(4, 1)],
        hard_state=HardState(2, "x", 0),
    )
    assert b.ops() == 4
    assert b.torn(0).empty()
    t = b.torn(2)
    assert t.snapshot is not None and [e.index for e in t.entries] == [3] and t.hard_state is None
    assert b.torn(4).hard_state == HardState(2, "x", 0)


def test_torn_writes_keep_a_prefix_across_batches() -> None:
    first = WriteBatch(entries=[E(1, 1), E(2, 1)], hard_state=HardState(1, "a", 0))
    second = WriteBatch(entries=[E(3, 1)])
    assert torn_prefix([first, second], 0) == []
    (only,) = torn_prefix([first, second], 2)
    assert [e.index for e in only.entries] == [1, 2] and only.hard_state is None
    whole, part = torn_prefix([first, second], 4)
    assert whole == first and [e.index for e in part.entries] == [3]


# ============================================================================ Ready driver


class Harness:
    """One core, its disk and a ReadyDriver, with every effect recorded in order."""

    def __init__(self, nid: str, *, persist_now: bool = False, pipeline: bool = True) -> None:
        self.core = RaftNode(nid, bootstrap=AB, rng=random.Random(1))
        self.disk = MemDisk()
        self.events: list[str] = []
        self.asked = 0
        self.now = persist_now
        self.driver = ReadyDriver(
            self.core,
            self.disk,
            send=self.send,
            apply=lambda rd: self.events.append(f"apply {[e.index for e in rd.committed]}"),
            persisted=lambda b: self.events.append(f"persist {b.ops()}"),
            pipeline=pipeline,
        )
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)
        self.events.append(f"send {type(msg).__name__}")

    def persist_now(self, batch: WriteBatch) -> bool:
        self.asked += 1
        return self.now

    def drain(self) -> None:
        while self.driver.wants_ready():
            self.driver.take(self.core.ready(), self.persist_now)


def test_driver_sends_early_messages_at_once_and_the_rest_only_after_the_fsync() -> None:
    """raft/ready.py step 2: an ``after_persist=False`` message may leave before the fsync (a
    leader's appends); every other one only after it (a vote request stands for a durable vote)."""
    h = Harness("a")
    h.core.campaign()
    h.drain()
    assert h.sent == [] and h.disk.hard_state == HardState()  # the vote request waits for the fsync
    h.driver.finish()
    assert [type(m) for m in h.sent] == [RequestVote] and h.disk.hard_state.vote == "a"
    assert h.events[:2] == ["persist 1", "send RequestVote"]
    h.core.step(RequestVoteResp(1, "b", "a", True))
    h.drain()  # a leads: its no-op goes to b at once, before its own fsync
    assert isinstance(h.sent[-1], AppendEntries) and h.disk.last_index == 0
    h.driver.finish()
    assert h.disk.last_index == 1


def test_driver_finishes_in_the_order_taken_and_asks_to_persist_only_with_nothing_in_flight() -> None:
    h = Harness("b")
    h.core.step(AppendEntries(1, "a", "b", 0, 0, (E(1, 1), E(2, 1)), 0))
    h.drain()
    h.core.step(AppendEntries(1, "a", "b", 2, 1, (E(3, 1),), 3))
    h.drain()
    assert len(h.driver.queue) == 2 and h.asked == 1  # the second waited its turn unasked
    h.driver.finish(1)
    assert h.disk.last_index == 2 and [m.index for m in h.sent if isinstance(m, AppendEntriesResp)] == [2]
    h.driver.finish(1)
    assert h.disk.last_index == 3 and [m.index for m in h.sent if isinstance(m, AppendEntriesResp)] == [2, 3]
    # each Ready: persisted, then its messages, then applied (advance comes last)
    assert h.events == [
        "persist 3", "send AppendEntriesResp", "apply []",
        "persist 1", "send AppendEntriesResp", "apply [1, 2, 3]",
    ]  # fmt: skip


def test_driver_finishes_at_once_when_the_harness_says_so() -> None:
    h = Harness("b", persist_now=True)
    h.core.step(AppendEntries(1, "a", "b", 0, 0, (E(1, 1),), 1))
    h.drain()
    assert not h.driver.queue and h.disk.last_index == 1
    assert h.events == ["persist 2", "send AppendEntriesResp", "apply [1]"]


def test_serial_driver_takes_no_ready_while_one_is_in_flight() -> None:
    h = Harness("b", pipeline=False)
    h.core.step(AppendEntries(1, "a", "b", 0, 0, (E(1, 1),), 0))
    h.drain()
    h.core.step(AppendEntries(1, "a", "b", 1, 1, (E(2, 1),), 0))
    assert h.core.has_ready() and not h.driver.wants_ready()
    h.driver.finish()
    assert h.driver.wants_ready()


def test_crash_loses_what_is_in_flight_or_keeps_a_torn_prefix() -> None:
    h = Harness("b")
    h.core.step(AppendEntries(1, "a", "b", 0, 0, (E(1, 1), E(2, 1), E(3, 1)), 0))  # 3 entries + term
    h.drain()
    assert h.driver.unsynced_ops(1) == 4
    h.driver.crash(written=1, keep_ops=2)
    assert [e.index for e in h.disk.entries] == [1, 2] and h.disk.hard_state == HardState()
    assert not h.driver.queue and h.sent == []  # the acknowledgement never left
    h2 = Harness("b")
    h2.core.step(AppendEntries(1, "a", "b", 0, 0, (E(1, 1),), 0))
    h2.drain()
    h2.driver.crash()  # not yet handed to the disk: nothing survives
    assert h2.disk.last_index == 0 and h2.disk.syncs == 0


def test_driver_fills_install_snapshot_from_the_disk_by_index() -> None:
    """The core emits InstallSnapshot without data; the driver attaches the bytes of the snapshot
    the metadata names — not merely the newest one — and refuses one it never stored."""
    h = Harness("a")
    old, new = SnapshotMeta(3, 1, AB), SnapshotMeta(6, 1, AB)
    h.disk.store_snapshot(old, b"three", drop_log=False)
    h.disk.store_snapshot(new, b"six", drop_log=False)
    rd = Ready(messages=[Outbound(InstallSnapshot(1, "a", "b", old), after_persist=False)])
    h.driver.take(rd, h.persist_now)
    (sent,) = h.sent
    assert isinstance(sent, InstallSnapshot) and sent.data == b"three"
    rd = Ready(messages=[Outbound(InstallSnapshot(1, "a", "b", SnapshotMeta(5, 1, AB)), after_persist=False)])
    with pytest.raises(DiskContractError) as ei:
        h.driver.take(rd, h.persist_now)
    assert ei.value.rule == "snapshot_contract"


# ============================================================================ the kit's place


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_kit_is_pure_and_the_core_never_imports_it() -> None:
    """The kit may import the standard library's pure parts and raftstate.raft (not the simulator,
    not node/); the core (raft/*.py) imports neither the kit nor the simulator."""
    pure_stdlib = {"__future__", "collections", "collections.abc", "dataclasses", "typing"}
    for path in sorted((RAFT / "testing").glob("*.py")):
        for mod in _imports(path):
            ok = mod in pure_stdlib or mod == "raftstate.raft" or mod.startswith("raftstate.raft.")
            assert ok and not mod.startswith("raftstate.node.sim"), f"{path.name} imports {mod}"
    for path in sorted(RAFT.glob("*.py")):
        for mod in _imports(path):
            assert not mod.startswith(("raftstate.raft.testing", "raftstate.node.sim")), (path.name, mod)
