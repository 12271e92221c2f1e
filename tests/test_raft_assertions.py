"""The core's own assertions (issue 13): an illegal role change, a malformed Ready, or a Ready
misused by its driver stops the node at once, with a message that states the broken invariant.

No legal sequence of inputs reaches most of these, so each test provokes one by calling a private
method, corrupting a field, or handing ``advance`` a doctored copy — the way a bug in the core or
in a driver would. The simulator's mutants (node/sim/mutants.py) break the *protocol* rules; these
assertions guard the bookkeeping around them and stay off what the mutants break.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re

import pytest

from raftnet import Net
from raftstate.node.driver import DriverSettings, RaftDriver
from raftstate.node.storage.store import MemoryStorage
from raftstate.raft import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    Membership,
    Message,
    Outbound,
    PersistedState,
    RaftNode,
    ReadState,
    Ready,
    RequestVote,
    Role,
    SnapshotMeta,
)
from raftstate.raft.ready import SnapshotToInstall

ABC = Membership(frozenset("abc"))
SOLO = Membership(frozenset("a"))


def node(nid: str = "b", members: Membership = ABC, state: PersistedState = PersistedState()) -> RaftNode:
    return RaftNode(nid, bootstrap=members, state=state, rng=random.Random(0))


def drain(n: RaftNode) -> None:
    """A perfect driver: take every Ready and hand it back."""
    while n.has_ready():
        n.advance(n.ready())


def solo_leader(proposals: int = 0) -> RaftNode:
    """A one-voter cluster: campaign() elects it at once; ``proposals`` entries after the no-op,
    all persisted, committed and applied."""
    n = node("a", SOLO)
    n.campaign()
    assert n.role == Role.LEADER
    drain(n)
    for k in range(proposals):
        n.propose(b"%d" % k)
        drain(n)
    return n


def in_role(role: Role) -> RaftNode:
    """Node b of {a, b, c}, or d (a learner), put in ``role`` by legal inputs (or its own method)."""
    if role == Role.LEADER:
        net = Net()
        net.elect("b")
        return net.node("b")
    if role == Role.LEARNER:
        n = node("d")
        assert n.role == Role.LEARNER
        return n
    n = node("b")
    if role == Role.CANDIDATE:
        n.campaign()
    elif role == Role.PRE_CANDIDATE:
        n._become_pre_candidate()
    assert n.role == role
    return n


# ============================================================================ role changes


@pytest.mark.parametrize(
    ("start", "to", "why"),
    [
        (Role.LEADER, Role.CANDIDATE, "an election starts only from a follower"),
        (Role.LEADER, Role.PRE_CANDIDATE, "a pre-vote starts only from a follower"),
        (Role.FOLLOWER, Role.LEADER, "only a candidate that won its election becomes leader"),
        (Role.PRE_CANDIDATE, Role.LEADER, "only a candidate that won its election becomes leader"),
        (Role.LEARNER, Role.LEADER, "only a candidate that won its election becomes leader"),
        (Role.LEARNER, Role.CANDIDATE, "an election starts only from a follower"),
        (Role.LEARNER, Role.PRE_CANDIDATE, "a pre-vote starts only from a follower"),
    ],
)
def test_an_illegal_role_change_is_refused(start: Role, to: Role, why: str) -> None:
    """etcd's becomeCandidate/becomeLeader panic on the same: a leader never campaigns (it steps
    down first), a leader is made only from a candidate, and a learner never campaigns."""
    n = in_role(start)
    become = {
        Role.LEADER: n._become_leader,
        Role.CANDIDATE: lambda: n._become_candidate(transfer=False),
        Role.PRE_CANDIDATE: n._become_pre_candidate,
    }[to]
    with pytest.raises(AssertionError, match=rf"illegal role change {start} -> {to} on {n.id} .*: {why}"):
        become()


def test_every_role_may_step_down_to_follower() -> None:
    for role in Role:
        n = in_role(role)
        n._become_follower(n.term + 1, None)
        assert n.role in (Role.FOLLOWER, Role.LEARNER) and n.vote is None


def test_a_candidate_without_a_quorum_of_votes_cannot_lead() -> None:
    n = in_role(Role.CANDIDATE)
    with pytest.raises(AssertionError, match=r"a leader holds a quorum of its term's votes \(§3.4\)"):
        n._become_leader()


def test_the_term_never_goes_down() -> None:
    n = node(state=PersistedState(HardState(5, None, 0)))
    with pytest.raises(AssertionError, match=r"terms never go down \(§3.3\): b in term 5 told 4"):
        n._become_follower(4, None)


def test_a_second_leader_in_the_same_term_is_refused() -> None:
    """Election Safety as one node can see it: a leader that hears an append from another leader
    of its own term (a split brain, or a buggy peer) stops rather than follow it."""
    n = in_role(Role.LEADER)
    with pytest.raises(AssertionError, match=r"at most one leader per term \(Election Safety"):
        n.step(AppendEntries(n.term, "c", "b", 0, 0, (), 0))
    f = node("b")
    f.step(Heartbeat(1, "a", "b", 0, 1))
    assert f.leader == "a"
    with pytest.raises(AssertionError, match=r"b follows c in term 1, which already had leader a"):
        f._become_follower(1, "c")


def test_a_follower_never_names_itself_leader() -> None:
    n = node("b")
    with pytest.raises(AssertionError, match="a follower never names itself leader"):
        n._become_follower(1, "b")


def test_a_vote_is_never_replaced_within_its_term() -> None:
    class VotesTwice(RaftNode):
        def _can_vote_for(self, msg: RequestVote) -> bool:
            return True  # the rule this test breaks on purpose

    n = VotesTwice("b", bootstrap=ABC, rng=random.Random(0))
    n.step(RequestVote(1, "a", "b", 0, 0))
    assert n.vote == "a"
    with pytest.raises(AssertionError, match=r"one vote per term \(§3.4.*b \(follower\) voted a in term 1"):
        n.step(RequestVote(1, "c", "b", 0, 0))


def test_a_new_leader_ends_its_log_with_its_no_op() -> None:
    class NoNoop(RaftNode):
        def _append_own(self, kind: EntryKind, data: bytes, now_ms: int | None) -> int:
            if kind == EntryKind.NOOP:
                return self.log.last_index  # forgets to append it
            return super()._append_own(kind, data, now_ms)

    n = NoNoop("a", bootstrap=SOLO, rng=random.Random(0))
    with pytest.raises(AssertionError, match=r"a new leader's log ends with its no-op \(term 1\)"):
        n.campaign()


# ============================================================================ Ready, as made


def test_a_ready_is_immutable_once_handed_out() -> None:
    n = solo_leader()
    n.propose(b"x")
    rd = n.ready()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rd.entries = ()  # type: ignore[misc]
    for name in ("entries", "messages", "committed", "reads", "dropped_reads"):
        assert isinstance(getattr(rd, name), tuple), name
    n.advance(rd)


def test_applied_never_passes_committed() -> None:
    n = solo_leader(proposals=2)
    n.log.applied = n.log.committed + 1
    with pytest.raises(
        AssertionError, match=r"applied 4 <= committed 3 <= last_index 3 >= persisted 3 must hold"
    ):
        n.ready()


def test_the_commit_index_never_passes_the_log() -> None:
    n = solo_leader(proposals=2)
    n.log.committed = n.log.applied = n.log.last_index + 2
    with pytest.raises(AssertionError, match=r"committed 5 <= last_index 3 >= persisted 3 must hold"):
        n.ready()


def test_entries_to_persist_are_contiguous() -> None:
    n = solo_leader(proposals=2)
    last = n.log.last_index
    n.log.entries += [Entry(last + 1, 1, 0), Entry(last + 3, 1, 0)]  # a hole, past RaftLog.append
    with pytest.raises(
        AssertionError, match=r"entries to persist run contiguously .*: 4/t1/0ms then 6/t1/0ms"
    ):
        n.ready()


def test_entries_to_persist_never_go_back_in_term() -> None:
    n = solo_leader(proposals=2)
    n.log.entries.append(Entry(n.log.last_index + 1, 0, 0))  # term 0 after term 1
    with pytest.raises(AssertionError, match=r"terms that never decrease: entry 4 of term 0 after term 1"):
        n.ready()


def test_the_log_never_goes_back_in_term_or_cluster_time() -> None:
    n = solo_leader(proposals=1)
    last = n.log.entry(n.log.last_index)
    with pytest.raises(AssertionError, match="term and cluster time never decrease along the log"):
        n.log.append([Entry(last.index + 1, last.term - 1, last.time_ms)])
    n = solo_leader(proposals=1)
    n.log.entries[-1] = dataclasses.replace(last, time_ms=1_000)
    with pytest.raises(AssertionError, match=r"entry 3 t1/999ms after t1/1000ms"):
        n.log.append([Entry(last.index + 1, last.term, 999)])


def test_committed_entries_are_contiguous() -> None:
    n = solo_leader(proposals=2)
    last = n.log.last_index
    n.log.entries += [Entry(last + 1, 1, 0), Entry(last + 3, 1, 0)]
    n.log.handed_index = n.log.persisted_index = n.log.last_index  # as if already handed out
    n.log.committed = n.log.last_index
    with pytest.raises(AssertionError, match=r"entries to apply run contiguously"):
        n.ready()


def test_a_vote_never_changes_within_its_term_on_disk() -> None:
    n = node("b")
    n.step(RequestVote(1, "a", "b", 0, 0))
    drain(n)
    n.vote = "c"
    with pytest.raises(
        AssertionError, match=r"a vote never changes within its term \(§3.4\): .*vote a -> term 1 vote c"
    ):
        n.ready()


def test_the_term_on_disk_never_goes_down() -> None:
    n = node("b")
    n.step(RequestVote(2, "a", "b", 0, 0))
    drain(n)
    n.term = 1
    with pytest.raises(AssertionError, match=r"the term never goes down .* term 2 vote a -> term 1 vote a"):
        n.ready()


def test_the_commit_index_on_disk_lies_within_the_log_written() -> None:
    class LongCommit(RaftNode):
        def _hard_state(self) -> HardState:
            return dataclasses.replace(super()._hard_state(), commit=self.log.committed + 5)

    n = LongCommit("b", bootstrap=ABC, rng=random.Random(0))
    n.step(RequestVote(1, "a", "b", 0, 0))
    with pytest.raises(AssertionError, match=r"the commit index written to disk \(5\) lies within the log"):
        n.ready()


def test_a_snapshot_to_install_is_committed() -> None:
    n = solo_leader(proposals=1)
    n._pending_snapshot = SnapshotToInstall(SnapshotMeta(n.log.committed + 3, 1, SOLO), b"")
    with pytest.raises(AssertionError, match=r"a snapshot to install holds committed entries only: index 5"):
        n.ready()


def test_a_read_is_released_at_a_committed_index() -> None:
    n = solo_leader(proposals=1)
    n._ready_reads.append(ReadState("r", n.log.committed + 1))
    with pytest.raises(
        AssertionError, match=r"a read is released at an index already committed \(§6.4\): 3 > 2"
    ):
        n.ready()


def test_a_node_sends_only_its_own_messages() -> None:
    n = solo_leader()
    n._msgs.append(Outbound(Heartbeat(1, "x", "a", 0, 0), after_persist=False))
    with pytest.raises(AssertionError, match="a sends only its own messages"):
        n.ready()


# ============================================================================ Ready, handed back


def test_a_ready_is_advanced_once() -> None:
    n = solo_leader()
    n.propose(b"x")
    rd = n.ready()
    n.advance(rd)
    k = rd.number
    with pytest.raises(AssertionError, match=rf"advanced once, in the order handed out: got #{k} after #{k}"):
        n.advance(rd)


def test_readys_are_advanced_in_the_order_handed_out() -> None:
    n = solo_leader()
    n.propose(b"x")
    first = n.ready()
    n.propose(b"y")
    second = n.ready()
    assert second.number == first.number + 1
    n.advance(second)
    with pytest.raises(
        AssertionError, match=rf"in the order handed out: got #{first.number} after #{second.number}"
    ):
        n.advance(first)


def test_a_ready_never_handed_out_is_refused() -> None:
    n = solo_leader()
    n.propose(b"x")
    rd = n.ready()
    k = rd.number
    with pytest.raises(AssertionError, match=rf"got #{k + 1} after #{k - 1} \(last handed out: #{k}\)"):
        n.advance(dataclasses.replace(rd, number=k + 1))
    other = node("c")
    with pytest.raises(AssertionError, match=rf"got #{k} after #0 \(last handed out: #0\)"):
        other.advance(rd)  # another node's Ready


def test_a_doctored_copy_with_a_hole_in_its_entries_is_refused() -> None:
    n = solo_leader()
    for k in range(3):
        n.propose(b"%d" % k)
    rd = n.ready()
    e2, _, e4 = rd.entries
    with pytest.raises(
        AssertionError, match=r"entries to persist run contiguously .*: 2/t1/0ms then 4/t1/0ms"
    ):
        n.advance(dataclasses.replace(rd, entries=(e2, e4)))


def test_advance_acknowledges_only_entries_handed_out_to_apply() -> None:
    n = solo_leader(proposals=1)
    n.propose(b"x")
    rd = n.ready()
    (e,) = rd.entries
    doctored = dataclasses.replace(rd, committed=(*rd.committed, e))  # e is not committed yet
    with pytest.raises(
        AssertionError, match=r"advance\(\) acknowledges only entries handed out to apply: 3 > applied 2"
    ):
        n.advance(doctored)


def test_a_persisted_term_is_one_the_core_had() -> None:
    n = solo_leader()
    n.propose(b"x")
    rd = n.ready()
    with pytest.raises(AssertionError, match=r"a persisted term is one the core had: 2 > 1"):
        n.advance(dataclasses.replace(rd, hard_state=HardState(2, "a", 0)))


def test_an_installed_snapshot_holds_committed_entries_only() -> None:
    n = solo_leader(proposals=1)
    n.propose(b"x")
    rd = n.ready()
    snap = SnapshotToInstall(SnapshotMeta(9, 1, SOLO), b"")
    with pytest.raises(
        AssertionError, match=r"entries to persist start after the snapshot installed with them"
    ):
        n.advance(dataclasses.replace(rd, snapshot=snap))
    with pytest.raises(AssertionError, match=r"an installed snapshot holds committed entries only: index 9"):
        n.advance(dataclasses.replace(rd, snapshot=snap, entries=()))


# ============================================================================ the driver's half


class _NullTransport:
    def send(self, msg: Message) -> None:
        pass

    def update_peers(self, addresses: dict[str, str]) -> None:
        pass


async def _driver_failure(sabotage: str) -> BaseException | None:
    d = RaftDriver(
        "b",
        bootstrap=ABC,
        storage=MemoryStorage(),
        transport=_NullTransport(),
        settings=DriverSettings(tick_ms=60_000),  # no ticks: no elections
    )
    if sabotage == "applied ahead":
        d.sm.applied_index = 1  # as if entry 1 had been applied behind the driver's back
    else:
        make = d.raft.ready

        def with_an_early_read() -> Ready:
            rd = make()
            return dataclasses.replace(rd, reads=(ReadState("r", 99),)) if rd.committed else rd

        d.raft.ready = with_an_early_read  # type: ignore[method-assign]
    await d.start()
    noops = tuple(Entry(i, 1, 0, EntryKind.NOOP) for i in (1, 2, 3))
    d.step(AppendEntries(1, "a", "b", 0, 0, noops, 3))
    for _ in range(10_000):
        if d.fatal_error is not None:
            break
        await asyncio.sleep(0)
    await d.stop()
    return d.fatal_error


@pytest.mark.parametrize(
    ("sabotage", "message"),
    [
        (
            "applied ahead",
            r"committed entries are applied once each, in log order, with no gap: entry 1 after applied 1",
        ),
        (
            "early read",
            r"a linearizable read is answered only once its index is applied \(§6.4\): "
            r"read index 99, applied 3",
        ),
    ],
)
def test_the_driver_checks_the_consumers_half(sabotage: str, message: str) -> None:
    """The core checks a Ready when it makes it; the driver checks what it does with it. A failed
    check is fatal to the node (memory and disk may disagree), like a failed fsync."""
    error = asyncio.run(_driver_failure(sabotage))
    assert isinstance(error, AssertionError) and re.search(message, str(error)), error


async def _driver_facing_a_second_leader() -> tuple[RaftDriver, BaseException | None]:
    d = RaftDriver(
        "b",
        bootstrap=ABC,
        storage=MemoryStorage(),
        transport=_NullTransport(),
        settings=DriverSettings(tick_ms=60_000),
    )
    await d.start()
    d.step(Heartbeat(1, "a", "b", 0, 1))  # b follows a in term 1
    raised = None
    try:
        d.step(AppendEntries(1, "c", "b", 0, 0, (), 0))  # c claims term 1 too: a split brain
    except AssertionError as exc:
        raised = exc
    await d.stop()
    return d, raised


def test_a_core_assertion_in_step_stops_the_node() -> None:
    """A broken invariant is never carried past: the transport would log and drop an exception
    from step() and keep the stream, so the driver marks the node failed first (the server exits)."""
    d, raised = asyncio.run(_driver_facing_a_second_leader())
    assert isinstance(raised, AssertionError) and "at most one leader per term" in str(raised)
    assert d.fatal_error is raised


async def _driver_whose_ready_breaks() -> RaftDriver:
    d = RaftDriver(
        "b",
        bootstrap=ABC,
        storage=MemoryStorage(),
        transport=_NullTransport(),
        settings=DriverSettings(tick_ms=60_000),
    )

    def broken() -> Ready:
        raise AssertionError("b: snapshot_index 0 <= applied 1 <= committed 0 ... must hold")

    d.raft.ready = broken  # type: ignore[method-assign]
    await d.start()
    d.step(Heartbeat(1, "a", "b", 0, 1))
    for _ in range(1_000):
        if d.fatal_error is not None:
            break
        await asyncio.sleep(0)
    await d.stop()
    return d


def test_a_core_assertion_in_ready_stops_the_node_instead_of_hanging_it() -> None:
    """Before, an exception in the ready loop ended that task silently: the node kept its
    connections and answered nothing. Now it is fatal, like a failed fsync."""
    d = asyncio.run(_driver_whose_ready_breaks())
    assert isinstance(d.fatal_error, AssertionError) and "must hold" in str(d.fatal_error)
