"""Single-server membership changes and learners, one rule per test (Raft dissertation, Ongaro
2014, §4.1–4.3 and §4.2.1 on learners — "non-voting members")."""

from __future__ import annotations

import pytest

from raftnet import Net, is_msg
from raftstate.raft import (
    ConfChange,
    ConfChangeInProgress,
    ConfChangeOp,
    Membership,
    RequestVote,
    RequestVoteResp,
    Role,
    TimeoutNow,
)
from raftstate.raft.testing import isolate, one_way

E = 10
ABC = Membership(frozenset("abc"))
votes = is_msg(RequestVote, RequestVoteResp)


def add_learner(net: Net, nid: str = "d", via: str = "a") -> None:
    net.start(nid, bootstrap=net.bootstrap)
    net.node(via).propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, nid))
    net.deliver()
    net.tick(via)
    net.deliver()


class LeaderLog:
    """Records every (term, leader) seen; fails at once on two leaders in one term (§3.6 Election
    Safety)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.seen: dict[int, str] = {}

    def check(self) -> None:
        for term, leaders in self.net.leaders_by_term().items():
            for lead in leaders:
                assert self.seen.setdefault(term, lead) == lead, (
                    f"two leaders in term {term}: {lead}, {self.seen[term]}"
                )
            assert len(leaders) == 1, f"two leaders in term {term}: {leaders}"


def win(net: Net, nid: str, log: LeaderLog, tries: int = 4) -> bool:
    for _ in range(tries):
        net.expire_leases(*[i for i in net.peers if i != nid and i not in net.down])
        net.node(nid).campaign()
        net.deliver_where(votes)
        log.check()
        if net.node(nid).role == Role.LEADER:
            return True
    return False


# ------------------------------------------------------------------------------ learners


def test_learner_receives_the_log() -> None:
    """§4.2.1: a new server joins as a learner (non-voting member) and is caught up by the leader
    like any follower; the configuration takes effect on every server as soon as it is appended."""
    net = Net()
    net.elect("a")
    net.propose("a", b"before")
    add_learner(net)
    net.propose("a", b"after")
    d = net.node("d")
    assert d.role == Role.LEARNER and d.membership.learners == {"d"}
    assert net.log("d") == net.log("a")
    assert net.commands("d") == [b"before", b"after"]


def test_learner_does_not_count_toward_the_commit_quorum() -> None:
    """§4.2.1: a learner's copy does not count toward a majority — with both other voters cut
    off, the leader plus a learner commit nothing."""
    net = Net()
    net.elect("a")
    add_learner(net)
    net.block(isolate("a", ["b", "c"]))
    a = net.node("a")
    idx = a.propose(b"x")
    net.deliver()
    assert a.progress["d"].match == idx and a.commit_index < idx


def test_learner_never_campaigns_and_its_vote_does_not_count() -> None:
    """§4.2.1: a learner never starts an election; candidates do not ask it, and a vote from a
    server outside the voters is ignored."""
    net = Net()
    net.elect("a")
    add_learner(net)
    d = net.node("d")
    net.isolate("d")
    net.tick("d", 6 * E)
    assert d.role == Role.LEARNER and d.term == 1
    assert not [m for m in net.sent if isinstance(m, RequestVote) and m.src == "d"]
    net.heal()
    net.expire_leases()
    b = net.node("b")
    b.campaign()
    net.process("b")
    assert {m.dst for m in net.pending(is_msg(RequestVote, src="b"))} == {"a", "c"}
    net.drop()
    b.step(RequestVoteResp(b.term, "d", "b", True))
    assert b.role == Role.CANDIDATE


def test_promoted_learner_votes_and_counts() -> None:
    """§4.2.1 / §4.1: promoting a caught-up learner makes it a voter: the majority grows (3 of 4)
    and its vote and its copy count."""
    net = Net()
    net.elect("a")
    add_learner(net)
    net.node("a").propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))
    net.deliver()
    a, d = net.node("a"), net.node("d")
    assert a.membership.voters == {"a", "b", "c", "d"} and d.role == Role.FOLLOWER
    net.isolate("c")
    idx = a.propose(b"x")
    net.deliver()
    assert a.commit_index == idx  # a, b, d: 3 of 4
    net.isolate("b")
    idx = a.propose(b"y")
    net.deliver()
    assert a.commit_index < idx  # a, d: 2 of 4 is not a majority


def test_member_joining_knowing_nobody_learns_the_membership_from_the_log() -> None:
    """§4.1: configurations live in the log, so a new server started with no membership at all
    learns the whole configuration from the entries it is sent (and stays a learner)."""
    net = Net()
    net.elect("a")
    net.start("d", bootstrap=Membership())
    net.node("a").propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    net.deliver()
    net.tick("a")
    net.deliver()
    d = net.node("d")
    assert d.membership == net.node("a").membership == Membership(frozenset("abc"), frozenset("d"))
    assert d.role == Role.LEARNER
    net.tick("d", 6 * E)
    assert d.role == Role.LEARNER and d.term == 1


# ------------------------------------------------------------------------------ removal


def test_remove_follower() -> None:
    """§4.1 / §4.3: removing a follower shrinks the configuration as soon as the entry is appended:
    the leader stops replicating to it and counts majorities of the remaining voters."""
    net = Net()
    net.elect("a")
    a = net.node("a")
    a.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "c"))
    assert "c" not in a.progress and a.membership.voters == {"a", "b"}
    net.deliver()
    net.isolate("c")
    idx = net.propose("a", b"x")
    assert a.commit_index == idx and net.commands("b") == [b"x"]


def test_remove_a_partitioned_node() -> None:
    """Pitfall (remove a partitioned node): the change needs only a majority of the *new*
    configuration's servers reachable... and of the old one: {a, b} of {a, b, c} suffice."""
    net = Net()
    net.elect("a")
    net.isolate("c")
    a = net.node("a")
    idx = a.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "c"))
    net.deliver()
    assert a.commit_index == idx
    net.run(5 * E)
    assert net.leader() == "a" and a.term == 1


def test_remove_the_leader() -> None:
    """§4.2.2: a leader can remove itself: it keeps leading (without counting itself) until the
    change commits, then steps down and hands over with TimeoutNow, so the remaining servers
    elect a new leader at once rather than after an election timeout."""
    net = Net()
    net.elect("a")
    a = net.node("a")
    idx = a.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "a"))
    assert a.role == Role.LEADER
    net.deliver()  # no ticks: everything below happens without any timeout
    assert a.role != Role.LEADER and a.term == 1
    assert [m.dst for m in net.sent if isinstance(m, TimeoutNow)] in (["b"], ["c"])
    new = net.leader()
    assert new in ("b", "c") and net.node(new).term == 2
    assert net.node(new).membership.voters == {"b", "c"} and net.node(new).commit_index > idx
    net.propose(new, b"x")
    assert net.commands("b")[-1] == net.commands("c")[-1] == b"x"


# ------------------------------------------------------------------------------ one at a time


def test_only_one_uncommitted_change_at_a_time() -> None:
    """§4.1: a leader does not start a membership change until the previous one is committed —
    single-server changes are only safe one at a time."""
    net = Net()
    net.elect("a")
    a = net.node("a")
    net.start("d", bootstrap=ABC)
    a.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    with pytest.raises(ConfChangeInProgress):
        a.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))
    net.deliver()
    a.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))


def test_no_change_before_the_leader_commits_an_entry_of_its_term() -> None:
    """§4.1 (the 2015 single-server-change fix): a new leader may not append a configuration
    entry until it has committed an entry of its own term (its no-op)."""
    net = Net()
    net.node("a").campaign()
    net.deliver_where(votes)
    a = net.node("a")
    assert a.role == Role.LEADER and a.commit_index == 0
    with pytest.raises(ConfChangeInProgress):
        a.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    net.deliver()
    a.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))


def test_invalid_changes_are_refused() -> None:
    """§4.1: a change must change something and leave at least one voter."""
    net = Net(("a",))
    net.elect("a")
    a = net.node("a")
    for cc in (
        ConfChange(ConfChangeOp.ADD_LEARNER, "a"),
        ConfChange(ConfChangeOp.PROMOTE, "a"),
        ConfChange(ConfChangeOp.REMOVE, "zz"),
        ConfChange(ConfChangeOp.REMOVE, "a"),
    ):
        with pytest.raises(ConfChangeInProgress):
            a.propose_conf_change(cc)


def test_truncated_config_entry_is_rolled_back_on_the_follower() -> None:
    """§4.1: a server uses the latest configuration in its log, committed or not — so when a new
    leader overwrites an uncommitted configuration entry, the follower falls back to the
    previous configuration (and reports it)."""
    net = Net(("a", "b", "c", "d", "e"))
    net.elect("a")
    net.block(one_way("a", ["c", "d", "e"]) | one_way("b", "a"))
    net.start("f", bootstrap=net.bootstrap)
    net.node("a").propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "f"))
    net.deliver()
    b = net.node("b")
    assert b.membership.learners == {"f"} and b.commit_index < b.log.last_index
    net.crash("a")
    net.heal()
    net.expire_leases()
    net.elect("c")  # c, d, e: c lacks the entry
    net.deliver()
    assert b.membership == net.bootstrap and "f" not in net.node("c").progress
    assert net.log("b") == net.log("c")


def test_add_and_remove_with_a_leader_change_never_elect_two_leaders_in_a_term() -> None:
    """§4.1 / pitfall (the single-server-change bug, raft-dev 2015): C = {S1..S4}. S1 appends
    "add S5" (only S1 and S5 get it) and crashes; S2 leads term 2 and removes S1 (committed by
    S2 and S3 under the new configuration). Had S2 skipped committing its no-op first, S1 (in
    its 5-server configuration) and S3 could both win the next term. With the no-op rule, S4
    holds a term-2 entry and refuses S1, so S1 never wins and each term has one leader."""
    ids = ("s1", "s2", "s3", "s4")
    net = Net(ids)
    log = LeaderLog(net)
    net.elect("s1")
    net.start("s5", bootstrap=net.bootstrap)
    net.block(one_way("s1", ["s2", "s3", "s4"]))
    net.node("s1").propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "s5"))
    net.tick("s1")  # the new member is contacted with the next heartbeat
    net.deliver()
    assert net.node("s5").membership.voters == {"s1", "s2", "s3", "s4", "s5"}
    net.crash("s1")
    net.heal()

    assert win(net, "s2", log)
    net.deliver()
    s2 = net.node("s2")
    assert s2.log.term_at(s2.commit_index) == s2.term, "the no-op committed (s2, s3, s4)"
    net.block(one_way("s2", ["s4", "s5"]))
    idx = s2.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "s1"))
    net.deliver()
    assert s2.commit_index == idx
    net.crash("s2")
    net.heal()

    net.restart("s1")
    for _ in range(3):
        assert not win(net, "s1", log, tries=1), "s1 won with a stale configuration"
    assert win(net, "s3", log)
    net.restart("s2")
    for _ in range(10 * E):
        net.tick()
        net.deliver()
        log.check()
    lead = net.leader()
    assert lead in ("s2", "s3", "s4")
    assert net.node(lead).membership.voters == {"s2", "s3", "s4"}
    assert net.node(lead).log.term_at(idx) == 2
