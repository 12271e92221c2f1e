"""Core-related pitfalls from /work/shared/RAFT-PITFALLS.md not covered by the other rule files
(each of those cites its pitfall in its docstring). Every test here is a bug a real Raft system
shipped; the docstring names it and the rule of the Raft dissertation (Ongaro 2014) it breaks."""

from __future__ import annotations

import random

import pytest

from raftnet import Net, is_msg
from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    ConfChange,
    ConfChangeOp,
    Heartbeat,
    HeartbeatResp,
    RaftError,
    Role,
)
from raftstate.raft.testing import one_way, symmetric

E = 10
FIVE = ("a", "b", "c", "d", "e")


class Safety:
    """Election Safety and Leader Completeness (§3.6.3), checked after every step: one leader per
    term; nodes never apply different entries at one index; and a leader of a term later than
    the one in which an entry was known applied (hence committed) holds that entry."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.leaders: dict[int, str] = {}
        #: index -> (term, data, term of the node that applied it: the commit term is <= this)
        self.applied: dict[int, tuple[int, bytes, int]] = {}

    def check(self) -> None:
        for term, ls in self.net.leaders_by_term().items():
            assert len(ls) == 1, f"two leaders in term {term}: {ls}"
            (lead,) = ls
            first = self.leaders.setdefault(term, lead)
            assert first == lead, f"term {term}: {first} then {lead}"
        for nid, p in self.net.peers.items():
            for e in p.applied:
                seen = self.applied.setdefault(e.index, (e.term, e.data, self.net.node(nid).term))
                assert seen[:2] == (e.term, e.data), f"{nid} applied a different entry at {e.index}"
        for nid in self.net.peers:
            n = self.net.node(nid)
            if n.role == Role.LEADER and nid not in self.net.down:
                for idx, (term, _, bound) in self.applied.items():
                    if n.term > bound and idx > n.log.snapshot_index:
                        assert n.log.term_at(idx) == term, f"leader {nid} lacks committed entry {idx}"

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.net.tick()
            self.net.deliver()
            self.check()


def settle(net: Net, safety: Safety, max_ticks: int = 20 * E) -> str:
    for _ in range(max_ticks):
        lead = net.leader()
        if lead is not None and net.node(lead).commit_index and net.node(lead).role == Role.LEADER:
            if net.node(lead).log.term_at(net.node(lead).commit_index) == net.node(lead).term:
                return lead
        safety.run(1)
    raise AssertionError("no leader settled")


# ------------------------------------------------------------------------------ durability


def test_every_promise_of_durability_leaves_only_after_the_fsync() -> None:
    """Pitfall "acknowledged means durable" / §3.8: a vote grant, a candidate's RequestVote (it
    votes for itself), an append or snapshot acknowledgement must not leave before the state
    they promise is on disk. A leader's appends and heartbeats may go early (§10.2.1); heartbeat
    replies promise nothing durable and are not constrained here."""
    net = Net()
    flags: dict[str, set[bool]] = {}
    orig = net.process

    def spy(nid: str) -> None:
        node = net.node(nid)
        while node.has_ready() and nid not in net.down:
            rd = node.ready()
            for o in rd.messages:
                flags.setdefault(type(o.msg).__name__, set()).add(o.after_persist)
            p = net.peers[nid]
            p.driver.take(rd, p.persist_now)  # the harness's own persist/send/apply step

    net.process = spy  # type: ignore[method-assign]
    net.elect("a")
    for k in range(3):
        net.propose("a", b"%d" % k)
    net.isolate("c")
    for k in range(3):
        net.propose("a", b"x%d" % k)
    net.compact("a")
    net.heal()
    net.run(3)
    net.node("a").transfer_leadership("b")
    net.deliver()
    net.process = orig  # type: ignore[method-assign]
    must_wait = {
        "RequestVote",
        "RequestVoteResp",
        "AppendEntriesResp",
        "InstallSnapshotResp",
    }
    for name in must_wait:
        assert flags.get(name) == {True}, f"{name} may leave before its fsync: {flags.get(name)}"
    for name in ("AppendEntries", "Heartbeat", "HeartbeatResp", "InstallSnapshot", "TimeoutNow"):
        assert name in flags, f"scenario did not exercise {name}"


@pytest.mark.parametrize("seed", range(3))
def test_acknowledged_entries_survive_crashing_any_minority_and_then_everyone(seed: int) -> None:
    """Pitfall / §3.8 (kill -9): once an entry is applied by the leader (acknowledged to the
    client) it survives the crash of any minority, and of every node at once — even with fsyncs
    in flight on some nodes at the moment of the crash."""
    rng = random.Random(seed)
    net = Net(FIVE, seed=seed)
    safety = Safety(net)
    acked: list[bytes] = []
    for rnd in range(5):
        lead = settle(net, safety)
        for k in range(3):
            net.propose(lead, b"%d-%d" % (rnd, k))
        slow = rng.sample([i for i in FIVE if i != lead], 2)
        for i in slow:
            net.hold(i)  # their next fsync will still be running when they crash
        net.node(lead).propose(b"%d-inflight" % rnd)
        net.deliver()
        acked = net.commands(lead)
        victims = rng.sample(FIVE, 2) if rnd % 2 == 0 else list(FIVE)
        for i in victims:
            net.crash(i)
        for i in FIVE:
            if net.peers[i].holding:
                net.release(i)
        for i in victims:
            net.restart(i)
        lead = settle(net, safety)
        safety.run(3)
        have = net.commands(lead)
        assert have[: len(acked)] == acked, "an acknowledged entry was lost"


def test_follower_crash_before_its_fsync_is_not_counted() -> None:
    """Pitfall / §3.8: a follower acknowledges an append only after its fsync, so a follower
    that crashes before the fsync never counted toward a commit; the leader waits for a
    durable majority."""
    net = Net()
    net.elect("a")
    net.hold("b")
    net.isolate("c")
    a = net.node("a")
    idx = a.propose(b"x")
    net.deliver()
    assert a.commit_index < idx and net.node("b").log.last_index == idx
    net.crash("b")
    net.restart("b")
    assert net.node("b").log.last_index < idx
    net.heal()
    net.tick("a")
    net.deliver()
    assert a.commit_index == idx and net.commands("b") == [b"x"]


# ------------------------------------------------------------------------------ stale leaders


def test_write_through_a_deposed_leader_is_never_applied_and_its_outcome_is_decidable() -> None:
    """Pitfall (deposed leader; write retried across a leader change): a partitioned leader still
    accepts a proposal, but it never commits; the new leader's log replaces it, and the proposer
    can tell the command was lost because the entry at its index carries another term (the
    contract of RaftNode.propose) — while one that commits keeps its term."""
    net = Net()
    net.elect("a")
    a = net.node("a")
    net.isolate("a")
    term_then = a.term
    lost_idx = a.propose(b"stale")
    net.deliver()
    net.expire_leases("b", "c")
    net.elect("b")
    kept_idx = net.propose("b", b"fresh")
    net.heal()
    net.tick("b")
    net.deliver()
    assert a.role == Role.FOLLOWER
    for i in "abc":
        assert b"stale" not in net.commands(i)
        assert net.node(i).log.term_at(lost_idx) != term_then
        assert net.node(i).log.term_at(kept_idx) == net.node("b").term
        assert b"fresh" in net.commands(i)


def test_stale_leader_learns_the_new_term_from_a_refusal() -> None:
    """§3.3 with PreVote/CheckQuorum (§9.6, §6.2): a follower that refuses a stale leader's append must
    tell it the newer term — otherwise, with nobody campaigning, the stale leader would never
    hear of it and keep its clients waiting."""
    net = Net()
    net.elect("a")
    net.isolate("a")
    net.expire_leases("b", "c")
    net.elect("b")
    net.heal()
    net.tick("a")
    net.deliver_where(is_msg(Heartbeat, AppendEntries, AppendEntriesResp, HeartbeatResp, src="a"))
    net.process("b")
    net.process("c")
    refusals = net.pending(is_msg(AppendEntriesResp, dst="a"))
    assert refusals and all(m.term == 2 for m in refusals)
    net.deliver()
    assert net.node("a").role == Role.FOLLOWER and net.node("a").term == 2


# ------------------------------------------------------------------------------ membership under change


def _change(net: Net, lead: str, cc: ConfChange, safety: Safety) -> None:
    idx = net.node(lead).propose_conf_change(cc)
    for _ in range(3 * E):
        safety.run(1)
        if net.node(lead).commit_index >= idx or net.node(lead).role != Role.LEADER:
            break


def _handover(net: Net, safety: Safety, old: str) -> str:
    net.isolate(old)
    for _ in range(6 * E):
        safety.run(1)
        lead = net.leader()
        if lead not in (None, old):
            break
    net.heal()
    return settle(net, safety)


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(["+d", "+e"], id="two adds"),
        pytest.param(["-c", "-b"], id="two removes"),
        pytest.param(["+d", "-b"], id="add then remove"),
        pytest.param(["-b", "+d"], id="remove then add"),
    ],
)
def test_two_changes_with_a_leader_change_between_stay_safe(plan: list[str]) -> None:
    """Pitfall / §4.1: two single-server changes with a leader change between them never yield
    two leaders in a term or lose a committed entry (each leader commits its no-op first; one
    uncommitted change at a time)."""
    net = Net(("a", "b", "c"))
    safety = Safety(net)
    lead = settle(net, safety)
    for step, change in enumerate(plan):
        node = change[1]
        if change[0] == "+":
            net.start(node, bootstrap=net.bootstrap)
            _change(net, lead, ConfChange(ConfChangeOp.ADD_LEARNER, node), safety)
            _change(net, lead, ConfChange(ConfChangeOp.PROMOTE, node), safety)
        else:
            _change(net, lead, ConfChange(ConfChangeOp.REMOVE, node), safety)
            net.crash(node)
        lead = settle(net, safety)
        net.propose(lead, b"after-%d" % step)
        safety.check()
        if step == 0:
            lead = _handover(net, safety, lead)
    safety.run(5 * E)
    lead = settle(net, safety)
    assert [c for c in net.commands(lead) if c.startswith(b"after")] == [b"after-0", b"after-1"]


def test_add_a_node_during_a_partition() -> None:
    """Pitfall (add a node during a partition) / §4.1: with one of three voters cut off, a leader
    can still add and promote a fourth (the majority of four is the leader, the reachable
    follower and the new node), and the partitioned node catches up when it returns."""
    net = Net()
    safety = Safety(net)
    lead = settle(net, safety)
    other = next(i for i in ("a", "b", "c") if i != lead)
    cut = next(i for i in ("a", "b", "c") if i not in (lead, other))
    net.start("d", bootstrap=net.bootstrap)
    net.isolate(cut)
    _change(net, lead, ConfChange(ConfChangeOp.ADD_LEARNER, "d"), safety)
    _change(net, lead, ConfChange(ConfChangeOp.PROMOTE, "d"), safety)
    assert net.node(lead).membership.voters == {"a", "b", "c", "d"}
    idx = net.propose(lead, b"x")
    assert net.node(lead).commit_index >= idx
    net.heal()
    safety.run(3 * E)
    assert net.node(cut).membership.voters == {"a", "b", "c", "d"} and b"x" in net.commands(cut)


def test_removed_node_does_not_disrupt_the_cluster() -> None:
    """§4.2.3: a removed server that never learns of its removal times out and asks for votes;
    PreVote and the followers' lease (§9.6, §4.2.3) keep it from deposing the leader."""
    net = Net()
    net.elect("a")
    net.block(one_way("a", "c"))  # c never receives its removal
    net.node("a").propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "c"))
    net.deliver()
    net.heal()
    net.run(10 * E)
    assert net.leader() == "a" and net.node("a").term == 1
    assert net.node("b").term == 1


# ------------------------------------------------------------------------------ randomized schedule


@pytest.mark.parametrize("seed", range(4))
def test_random_partitions_and_crashes_keep_election_safety_and_applied_entries(seed: int) -> None:
    """§3.6.3 (Election Safety, State Machine Safety) under a small random schedule of partitions,
    crashes and proposals, checked after every tick; at the end the healed cluster converges."""
    rng = random.Random(seed)
    net = Net(FIVE, seed=seed)
    safety = Safety(net)
    for step in range(25):
        net.heal()
        for _ in range(rng.randrange(0, 3)):
            x, y = rng.sample(FIVE, 2)
            net.block(symmetric([x, y]))
        if rng.random() < 0.2:
            victim = rng.choice(FIVE)
            net.crash(victim)
            net.restart(victim)
        lead = net.leader()
        if lead is not None:
            try:
                net.node(lead).propose(b"s%d" % step)
            except RaftError:  # e.g. a transfer in progress
                pass
        safety.run(rng.randrange(1, 2 * E))
    net.heal()
    lead = settle(net, safety)
    safety.run(3 * E)
    ref = net.commands(lead)
    assert ref, "nothing was committed"
    for i in FIVE:
        assert net.commands(i) == ref
