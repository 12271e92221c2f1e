"""Leadership transfer, one rule per test (Raft dissertation, Ongaro 2014, §3.10)."""

from __future__ import annotations

import pytest

from raftnet import Net, is_msg
from raftstate.raft import (
    AppendEntries,
    ConfChange,
    ConfChangeOp,
    HeartbeatResp,
    LeadershipTransferInProgress,
    NotLeader,
    Role,
    TimeoutNow,
)

E = 10


def lagging_c() -> Net:
    net = Net()
    net.elect("a")
    net.isolate("c")
    for k in range(5):
        net.propose("a", b"v%d" % k)
    net.heal()
    return net


def test_timeout_now_only_after_the_target_caught_up() -> None:
    """§3.10 steps 1–2: the leader first brings the target's log up to date, and only then sends
    it TimeoutNow; the target starts an election at once (no election timeout) and, with the
    most up-to-date log, wins it."""
    net = lagging_c()
    a, c = net.node("a"), net.node("c")
    a.transfer_leadership("c")
    net.process("a")
    assert not net.pending(is_msg(TimeoutNow)), "TimeoutNow sent to a target that is behind"
    assert net.pending(is_msg(AppendEntries, dst="c"))
    while not net.pending(is_msg(TimeoutNow)):
        assert net.deliver(limit=1) == 1
        if not net.pending(is_msg(TimeoutNow)):
            assert a.progress["c"].match < a.log.last_index or a.role != Role.LEADER
    assert a.progress["c"].match == a.log.last_index
    net.deliver()  # no ticks
    assert c.role == Role.LEADER and c.term == 2
    assert a.role == Role.FOLLOWER and a.leader == "c"


def test_timeout_now_at_once_to_an_up_to_date_target() -> None:
    """§3.10: a target that already holds the leader's whole log gets TimeoutNow right away."""
    net = Net()
    net.elect("a")
    net.tick("a")
    net.deliver()
    net.node("a").transfer_leadership("b")
    net.process("a")
    assert [m.dst for m in net.pending(is_msg(TimeoutNow))] == ["b"]
    net.deliver()
    assert net.leader() == "b"


def test_proposals_are_refused_during_a_transfer() -> None:
    """§3.10 step 1: while transferring, the leader stops accepting client requests (they would
    only be lost or delay the handover); the caller is told to retry on the new leader."""
    net = lagging_c()
    a = net.node("a")
    a.transfer_leadership("c")
    with pytest.raises(LeadershipTransferInProgress) as exc:
        a.propose(b"x")
    assert exc.value.target == "c"
    with pytest.raises(LeadershipTransferInProgress):
        a.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "b"))


def test_transfer_is_aborted_after_an_election_timeout_if_the_target_is_dead() -> None:
    """§3.10: if the transfer does not complete within an election timeout, the leader aborts it
    and resumes accepting client requests (it is still the leader)."""
    net = Net()
    net.elect("a")
    net.crash("c")
    a = net.node("a")
    a.transfer_leadership("c")
    for _ in range(E):
        with pytest.raises(LeadershipTransferInProgress):
            a.propose(b"early")
        net.tick()
        net.deliver()
    assert a.role == Role.LEADER and a.term == 1 and a.transfer_target is None
    idx = net.propose("a", b"x")
    assert a.commit_index == idx


def test_transfer_only_by_the_leader_to_a_voter() -> None:
    """§3.10: only the leader transfers, and only to a voting member (a learner cannot lead)."""
    net = Net(learners=("d",))
    net.elect("a")
    with pytest.raises(NotLeader):
        net.node("b").transfer_leadership("c")
    with pytest.raises(ValueError):
        net.node("a").transfer_leadership("d")


def test_transfer_election_overrides_the_followers_lease() -> None:
    """§3.10 / §4.2.3: the target's RequestVote says it comes from a transfer, so followers that
    still hear from the old leader (inside their lease) vote anyway."""
    net = Net(("a", "b", "c", "d", "e"))
    net.elect("a")
    net.tick("a")
    net.deliver()
    for i in "bcde":
        assert net.node(i).election_elapsed < E and net.node(i).leader == "a"
    net.node("a").transfer_leadership("e")
    net.deliver()
    assert net.leader() == "e" and net.node("e").term == 2


def test_pending_reads_are_dropped_when_the_leader_hands_over() -> None:
    """§6.4 / pitfall (reads dropped on transfer): a ReadIndex read still waiting for its
    heartbeat round when leadership moves away is dropped, never released by the old leader."""
    net = Net()
    net.elect("a")
    net.tick("a")
    net.deliver()
    a = net.node("a")
    a.read_index("r")
    a.transfer_leadership("b")
    net.deliver_where(lambda m: not isinstance(m, HeartbeatResp))  # the read round never completes
    net.drop()
    assert a.role == Role.FOLLOWER
    assert net.peers["a"].dropped_reads == ["r"] and net.peers["a"].reads == []
