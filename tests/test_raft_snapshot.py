"""Log compaction and InstallSnapshot, one rule per test (Raft dissertation, Ongaro 2014,
§5.1; the InstallSnapshot RPC is Figure 5.3)."""

from __future__ import annotations

import random

import pytest

from raftnet import Net, decode_sm, is_msg
from raftstate.raft import (
    AppendEntries,
    Entry,
    HardState,
    InstallSnapshot,
    InstallSnapshotResp,
    Membership,
    PersistedState,
    RaftNode,
    Role,
    SnapshotMeta,
)

E = 10


def lagging(n_entries: int = 20) -> Net:
    """a leads; c missed ``n_entries`` proposals; a compacted its whole applied log."""
    net = Net()
    net.elect("a")
    net.isolate("c")
    for k in range(n_entries):
        net.propose("a", b"v%d" % k)
    net.compact("a")
    net.heal()
    return net


def test_compact_drops_entries_and_keeps_the_boundary() -> None:
    """§5.1: compaction replaces the applied prefix of the log by a snapshot whose metadata keeps
    the last included index and term (for the consistency check of the next append), the
    configuration as of that index, and its cluster time."""
    net = Net()
    net.elect("a")
    for k in range(5):
        net.now_ms += 100
        net.propose("a", b"v%d" % k)
    a = net.node("a")
    last4 = a.log.entry(4)
    meta = net.compact("a", 4)
    assert (meta.index, meta.term, meta.time_ms) == (4, 1, last4.time_ms)
    assert meta.membership == Membership(frozenset("abc"))
    assert a.log.first_index == 5 and [e.index for e in a.log.entries] == [5, 6]
    assert a.log.term_at(4) == 1 and a.log.term_at(3) is None
    net.propose("a", b"after")
    assert net.applied_data("b")[-1] == b"after"


def test_lagging_follower_gets_install_snapshot_with_data_filled_by_the_driver() -> None:
    """§5.1: when a follower needs entries the leader already discarded, the leader sends its
    snapshot instead. The core emits the InstallSnapshot with empty data; the driver attaches the
    application's snapshot bytes."""
    net = lagging()
    net.tick("a")
    net.deliver()
    core = [m for m in net.core_sent if isinstance(m, InstallSnapshot)]
    wire = [m for m in net.sent if isinstance(m, InstallSnapshot)]
    assert len(core) == 1 and core[0].dst == "c" and core[0].data == b""
    assert wire[0].data == net.peers["a"].disk.latest_snapshot_data() != b""
    assert core[0].meta.index == net.node("a").log.snapshot_index == 21


def test_follower_restores_the_snapshot_and_continues() -> None:
    """§5.1: a follower that receives a snapshot covering entries it lacks discards its log,
    installs the snapshot (state machine, membership), and then takes appends from right after
    it like any follower."""
    net = lagging()
    net.tick("a")
    net.deliver()
    c = net.node("c")
    assert (c.log.snapshot_index, c.commit_index, c.applied_index) == (21, 21, 21)
    assert net.peers["c"].disk.snapshot is not None and net.peers["c"].disk.snapshot.index == 21
    assert net.applied_data("c") == net.applied_data("a")
    net.propose("a", b"next")
    assert net.log("c") == [(22, 1)] and net.applied_data("c")[-1] == b"next"
    assert c.membership == net.node("a").membership


def test_restart_with_a_snapshot() -> None:
    """§5.1: a server restarts from its latest snapshot plus the log after it: it resumes at the
    snapshot's index, rebuilds its state machine from it, and can lead and replicate from there."""
    net = Net()
    net.elect("a")
    for k in range(6):
        net.propose("a", b"v%d" % k)
    net.compact("b", 5)
    net.crash("b")
    b = net.restart("b").node
    assert (b.log.snapshot_index, b.log.last_index, b.applied_index) == (5, 7, 5)
    assert [e.data for e in net.peers["b"].applied] == [b"", b"v0", b"v1", b"v2", b"v3"]
    net.expire_leases()
    net.elect("b")
    net.propose("b", b"after")
    assert net.applied_data("b") == net.applied_data("a")
    assert net.applied_data("c")[-1] == b"after" and net.applied_data("b")[-1] == b"after"


def test_leader_retries_after_a_lost_install_snapshot() -> None:
    """§5.1 / pitfall: if the InstallSnapshot (or its reply) is lost, the leader does not wait
    forever: after an election timeout without an answer it probes again and resends."""
    net = lagging()
    net.tick("a")
    net.deliver(only=lambda m: not isinstance(m, InstallSnapshot))  # the network loses it
    assert len([m for m in net.sent if isinstance(m, InstallSnapshot)]) == 1
    assert net.node("c").log.snapshot_index == 0
    for _ in range(3 * E):
        net.tick()
        net.deliver()
        if net.node("c").log.snapshot_index:
            break
    assert net.node("c").log.snapshot_index == 21
    assert len([m for m in net.sent if isinstance(m, InstallSnapshot)]) == 2
    assert net.applied_data("c") == net.applied_data("a")


def test_follower_crashing_mid_install_is_retried() -> None:
    """Pitfall (crash mid-install): a follower that crashes before its snapshot is durable has
    not acknowledged it; after restart the leader sends it again."""
    net = lagging()
    net.hold("c")
    net.tick("a")
    net.deliver()
    assert net.peers["c"].held and net.peers["c"].disk.snapshot is None
    net.crash("c")
    net.restart("c")
    for _ in range(3 * E):
        net.tick()
        net.deliver()
    assert net.node("c").log.snapshot_index == 21
    assert net.applied_data("c") == net.applied_data("a")


def test_snapshot_older_than_the_followers_commit_is_ignored() -> None:
    """§5.1: a snapshot that covers no more than what the follower already committed (a late
    duplicate) changes nothing; the follower answers with what it has."""
    net = Net()
    net.elect("a")
    for k in range(3):
        net.propose("a", b"v%d" % k)
    c = net.node("c")
    net.tick("a")
    net.deliver()
    log_before, commit_before = net.log("c"), c.commit_index
    c.step(InstallSnapshot(1, "a", "c", SnapshotMeta(2, 1, Membership(frozenset("abc")))))
    net.process("c")
    (resp,) = net.pending(is_msg(InstallSnapshotResp))
    assert resp.index == commit_before
    assert net.log("c") == log_before and c.log.snapshot_index == 0


def test_snapshot_matching_the_followers_log_keeps_the_tail() -> None:
    """§5.1, Figure 5.3 receiver rule 6: if the follower's log holds the snapshot's last entry (same index
    and term), it keeps the entries after it instead of discarding its log."""
    entries = tuple(Entry(i, 1, 0) for i in range(1, 6))
    node = RaftNode(
        "c",
        bootstrap=Membership(frozenset("abc")),
        state=PersistedState(HardState(1, None, 0), None, entries),
        rng=random.Random(0),
    )
    node.step(InstallSnapshot(1, "a", "c", SnapshotMeta(3, 1, Membership(frozenset("abc")))))
    assert node.log.last_index == 5 and node.commit_index == 3
    rd = node.ready()
    assert rd.snapshot is None
    assert [o.msg for o in rd.messages] == [InstallSnapshotResp(1, "c", "a", 3)]


def test_append_inside_the_followers_snapshot_is_accepted_past_it() -> None:
    """§5.1: entries up to the follower's snapshot are committed, hence identical to the leader's;
    an append whose prev_index lies inside the snapshot is merged from the snapshot on."""
    m = Membership(frozenset("abc"))
    node = RaftNode(
        "c",
        bootstrap=m,
        state=PersistedState(HardState(1, None, 10), SnapshotMeta(10, 1, m), ()),
        rng=random.Random(0),
    )
    node.step(AppendEntries(1, "a", "c", 5, 1, tuple(Entry(i, 1, 0) for i in range(6, 13)), 12))
    assert node.log.last_index == 12 and node.commit_index == 12
    (out,) = node.ready().messages
    assert out.msg.success and out.msg.index == 12  # type: ignore[union-attr]


def test_restart_with_a_snapshot_and_a_log_gap_is_refused() -> None:
    """Pitfall (restart with a snapshot and a log gap): a stored log that does not continue right
    after the snapshot cannot be trusted; the core refuses to start from it (ValueError) rather
    than misnumbering entries."""
    m = Membership(frozenset("abc"))
    with pytest.raises(ValueError, match="contiguous"):
        RaftNode(
            "a",
            bootstrap=m,
            state=PersistedState(HardState(1), SnapshotMeta(10, 1, m), (Entry(15, 1, 0),)),
            rng=random.Random(0),
        )


def test_install_snapshot_replaces_the_membership() -> None:
    """§5.1 / §4: the snapshot carries the configuration as of its last index; a follower that
    installs it adopts that configuration (here: it learns it is a learner)."""
    m = Membership(frozenset("ab"), frozenset("c"))
    net = Net()
    c = net.node("c")
    c.step(InstallSnapshot(3, "a", "c", SnapshotMeta(7, 2, m), b""))
    net.process("c")
    assert c.membership == m and c.role == Role.LEARNER
    assert net.peers["c"].disk.snapshot == SnapshotMeta(7, 2, m)
    data = net.peers["c"].disk.latest_snapshot_data()
    assert data is not None and decode_sm(data) == []
