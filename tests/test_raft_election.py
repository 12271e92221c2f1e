"""Leader election, one rule per test (Raft dissertation, Ongaro 2014, §3.4, §3.6, §3.8;
§4.2.3 leader stickiness, §6.2 CheckQuorum, §9.6 PreVote).

Each docstring states the rule; the body drives a :class:`raftnet.Net` (or steps one node by hand)
to exactly the situation the rule is about.
"""

from __future__ import annotations

import random

import pytest

from raftnet import SETTINGS, Net, is_msg
from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    EntryKind,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshotResp,
    Message,
    NotLeader,
    RaftSettings,
    RequestVote,
    RequestVoteResp,
    Role,
)
from raftstate.raft.testing import bridge, isolate, one_way

E = SETTINGS.election_ticks


def settled(ids: tuple[str, ...] = ("a", "b", "c"), leader: str = "a", **kw: object) -> Net:
    """A cluster whose ``leader`` was elected and committed its no-op everywhere."""
    net = Net(ids, **kw)  # type: ignore[arg-type]
    net.elect(leader)
    return net


def replies(net: Net, src: str, dst: str) -> list[Message]:
    net.process(src)
    return net.pending(is_msg(src=src, dst=dst))


def observe_leaders(net: Net, ticks: int) -> list[tuple[str | None, int]]:
    """Run ``ticks`` ticks; after each, record (leader, its term)."""
    seen: list[tuple[str | None, int]] = []
    for _ in range(ticks):
        net.tick()
        net.deliver()
        lead = net.leader()
        seen.append((lead, net.node(lead).term if lead else -1))
    return seen


# ------------------------------------------------------------------------------ timeouts


def test_election_timeout_is_randomized_in_e_to_2e() -> None:
    """§3.4: a follower that hears nothing starts an election after a timeout drawn at random
    from [e, 2e) election ticks, drawn afresh for every election, so that split votes resolve."""
    waits: list[int] = []
    for seed in range(8):
        net = Net(seed=seed)
        for nid in net.ids:
            node = net.node(nid)
            for _ in range(3):  # three successive (pre-)elections of this node alone
                ticks = 0
                start_role = node.role
                while True:
                    net.tick(nid)
                    ticks += 1
                    if node.election_elapsed == 0:  # a new (pre-)campaign just started
                        break
                    assert ticks < 2 * E, f"no election after {ticks} ticks (from {start_role})"
                assert node.role == Role.PRE_CANDIDATE
                waits.append(ticks)
    assert all(E <= w < 2 * E for w in waits), waits
    assert len(set(waits)) >= E // 2, f"timeouts barely vary: {sorted(set(waits))}"


# ------------------------------------------------------------------------------ votes


def test_one_vote_per_term() -> None:
    """§3.4: each server votes for at most one candidate in a term, first come first served;
    a second candidate of the same term is refused, while the same candidate may ask again."""
    net = Net()
    b = net.node("b")
    b.step(RequestVote(1, "a", "b", 0, 0))
    b.step(RequestVote(1, "c", "b", 0, 0))
    b.step(RequestVote(1, "a", "b", 0, 0))  # a retransmission from the candidate we voted for
    got = [m for m in replies(net, "b", "a") + replies(net, "b", "c") if isinstance(m, RequestVoteResp)]
    assert [(m.dst, m.granted) for m in got] == [("a", True), ("a", True), ("c", False)]
    assert (b.term, b.vote) == (1, "a")


def test_vote_is_durable_before_the_reply_and_survives_restart() -> None:
    """§3.4 / pitfall "vote reset on restart": the vote is part of the persistent state; it is
    handed to the driver to persist together with the reply, the reply may only leave after the
    fsync, and a server that restarts from disk still refuses a second candidate of that term."""
    net = Net()
    b = net.node("b")
    b.step(RequestVote(1, "a", "b", 0, 0))
    rd = b.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (1, "a")
    (out,) = [o for o in rd.messages if isinstance(o.msg, RequestVoteResp)]
    assert out.msg.granted and out.after_persist, "a vote may only leave once it is on disk"
    net.peers["b"].disk.hard_state = rd.hard_state  # the driver's persist step, then it crashes
    net.inbox.clear()

    b = net.restart("b").node
    assert (b.term, b.vote) == (1, "a")
    b.step(RequestVote(1, "c", "b", 5, 1))  # even with a better log, c cannot get b's vote in term 1
    (resp,) = [m for m in replies(net, "b", "c") if isinstance(m, RequestVoteResp)]
    assert not resp.granted
    assert b.vote == "a"


@pytest.mark.parametrize(
    ("cand_last_index", "cand_last_term", "granted"),
    [
        (2, 1, False),  # same last term, shorter log
        (9, 1, False),  # longer log, but an older last term
        (3, 2, True),  # same log
        (4, 2, True),  # same last term, longer log
        (1, 3, True),  # newer last term, shorter log
    ],
)
def test_vote_refused_to_candidate_with_stale_log(
    cand_last_index: int, cand_last_term: int, granted: bool
) -> None:
    """§3.6.1 (election restriction, §5.4.1 of the paper): a voter refuses a candidate whose log is
    less up-to-date than its own — compare last terms first, then last indexes."""
    net = Net()
    net.elect("a")  # [1:t1]
    net.expire_leases()
    net.elect("c")  # [1:t1, 2:t2]
    net.propose("c", b"x")  # [.., 3:t2], on every node
    b = net.node("b")
    assert (b.log.last_index, b.log.last_term) == (3, 2)
    net.expire_leases("b")
    b.step(RequestVote(3, "c", "b", cand_last_index, cand_last_term))
    (resp,) = [m for m in replies(net, "b", "c") if isinstance(m, RequestVoteResp)]
    assert resp.granted is granted
    assert b.term == 3, "the higher term is adopted even when the vote is refused"


# ------------------------------------------------------------------------------ PreVote, CheckQuorum


def test_prevote_isolated_node_rejoins_without_deposing_the_leader() -> None:
    """§9.6 (PreVote): a server first asks whether it *could* win; it only bumps its term when a
    majority says yes. So a node isolated for many election timeouts keeps its term, and when
    it comes back the healthy leader keeps leading in the same term.
    Control: without PreVote the same schedule deposes the leader."""
    for pre_vote, expect_deposed in ((True, False), (False, True)):
        net = settled(settings=RaftSettings(pre_vote=pre_vote))
        net.isolate("c")
        net.run(10 * E)
        assert net.node("c").role != Role.LEADER
        grew = net.node("c").term > 1
        net.heal()
        net.run(3 * E)
        if not expect_deposed:
            assert not grew, "c bumped its term while isolated despite PreVote"
            assert net.leader() == "a" and net.node("a").term == 1
            assert net.node("c").leader == "a" and net.node("c").term == 1
        else:
            assert grew and net.node("a").term > 1, "control: without PreVote c should disrupt"


def test_check_quorum_leader_cut_off_steps_down_and_refuses_requests() -> None:
    """§6.2 (CheckQuorum) / pitfall: a leader that has not heard from a majority for an election
    timeout steps down. The check runs once per election timeout over the replies of the timeout
    before, so it notices within one to two timeouts. Afterwards it refuses proposals and
    ReadIndex reads with NotLeader."""
    net = settled()
    net.run(3)
    net.isolate("a")
    ticks = 0
    while net.node("a").role == Role.LEADER:
        net.tick()
        net.deliver()
        ticks += 1
        assert ticks <= 2 * E, "the cut-off leader is still leading after two election timeouts"
    a = net.node("a")
    assert a.role == Role.FOLLOWER and a.leader is None
    with pytest.raises(NotLeader):
        a.propose(b"w")
    with pytest.raises(NotLeader):
        a.read_index("r")


def test_check_quorum_leader_with_majority_keeps_leading() -> None:
    """§6.2: CheckQuorum must not depose a leader that hears from a majority, even with one
    follower gone for a long time."""
    net = settled()
    net.isolate("c")
    net.run(10 * E)
    assert net.leader() == "a" and net.node("a").term == 1


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_lease_ignores_vote_requests(pre_vote: bool) -> None:
    """§4.2.3 (leader stickiness): a follower that heard from its leader within the last election
    timeout ignores RequestVote and pre-vote requests from other servers — no reply, no term
    change. Once the lease runs out it considers them again; a transfer election (TimeoutNow,
    §3.10) is exempt."""
    net = settled()
    b = net.node("b")
    req = RequestVote(2, "c", "b", 9, 9, pre_vote=pre_vote)
    b.step(req)
    assert replies(net, "b", "c") == []
    assert (b.term, b.leader) == (1, "a")

    b.step(RequestVote(2, "c", "b", 9, 9, pre_vote=pre_vote, transfer=True))
    (resp,) = replies(net, "b", "c")
    assert isinstance(resp, RequestVoteResp) and resp.granted
    net.inbox.clear()

    net2 = settled()
    net2.expire_leases("b")
    net2.node("b").step(req)
    (resp,) = replies(net2, "b", "c")
    assert isinstance(resp, RequestVoteResp) and resp.granted and resp.pre_vote is pre_vote


def test_current_leaders_own_prevote_can_be_granted() -> None:
    """Pitfall (PreVote + CheckQuorum): a leader that stepped down while its followers still
    hear it (they cannot answer it) must be able to win a pre-vote from those followers: their
    lease protects the leader they follow, not against it."""
    net = settled()
    net.run(2)
    net.block(one_way(["b", "c"], "a"))  # a's messages arrive; the replies do not
    for _ in range(3 * E):
        net.tick()
        net.deliver()
        if net.node("a").role != Role.LEADER:
            break
    assert net.node("a").role == Role.FOLLOWER
    assert net.node("b").leader == "a" and net.node("c").leader == "a", "followers still follow a"
    net.heal()
    while net.node("a").role == Role.FOLLOWER:
        net.tick("a")  # only a's clock moves: b and c are inside their lease for a
    assert net.node("a").role == Role.PRE_CANDIDATE
    net.deliver()
    grants = [m for m in net.sent if isinstance(m, RequestVoteResp) and m.pre_vote and m.dst == "a"]
    assert {m.src for m in grants if m.granted} == {"b", "c"}
    assert net.leader() == "a" and net.node("a").term == 2


# ------------------------------------------------------------------------------ election timer


def _timer_net() -> Net:
    net = settled()
    net.tick("b", 5)  # b: 5 ticks since it last heard from a
    assert net.node("b").election_elapsed == 5
    return net


def test_election_timer_resets_on_append_and_heartbeat_from_the_leader() -> None:
    """§3.4: a follower remains one as long as it receives valid AppendEntries (heartbeats
    included) from the current leader: each one restarts its election timer."""
    net = _timer_net()
    net.tick("a")  # a heartbeat
    net.deliver()
    assert net.node("b").election_elapsed == 0
    net.tick("b", 5)
    net.propose("a", b"x")  # an append
    assert net.node("b").election_elapsed == 0


def test_election_timer_resets_on_granting_a_vote() -> None:
    """§3.4: granting a vote restarts the election timer (the voter expects that candidate to
    win, and should not run against it)."""
    net = _timer_net()
    net.expire_leases("b")
    b = net.node("b")
    b.step(RequestVote(2, "c", "b", 9, 9))
    assert b.vote == "c" and b.election_elapsed == 0


def test_election_timer_resets_on_starting_an_election() -> None:
    """§3.4: starting an election (here a pre-vote round, and a real campaign) restarts the timer
    with a freshly randomized timeout."""
    net = _timer_net()
    b = net.node("b")
    while b.role == Role.FOLLOWER:
        net.tick("b")
    assert b.role == Role.PRE_CANDIDATE and b.election_elapsed == 0
    net.tick("b", 3)
    b.campaign()
    assert b.role == Role.CANDIDATE and b.election_elapsed == 0


@pytest.mark.parametrize(
    "event",
    ["vote refused for a stale log", "vote ignored in lease", "pre-vote granted", "message of an old term"],
)
def test_election_timer_not_reset_by_other_events(event: str) -> None:
    """Pitfall: the election timer resets *only* on an append from the current leader, on granting
    a vote, or on starting an election — not on refusing a vote, not on granting a pre-vote (a
    pre-vote changes nothing), not on a message from an old term."""
    net = _timer_net()
    b = net.node("b")
    if event == "vote refused for a stale log":
        net.expire_leases("b")
        before = b.election_elapsed
        b.step(RequestVote(2, "c", "b", 0, 0))
        assert b.vote is None and b.term == 2
    elif event == "vote ignored in lease":
        before = b.election_elapsed
        b.step(RequestVote(2, "c", "b", 9, 9))
        assert b.term == 1
    elif event == "pre-vote granted":
        net.expire_leases("b")
        before = b.election_elapsed
        b.step(RequestVote(2, "c", "b", 9, 9, pre_vote=True))
        (resp,) = replies(net, "b", "c")
        assert isinstance(resp, RequestVoteResp) and resp.granted
    else:
        before = b.election_elapsed
        b.step(Heartbeat(0, "c", "b", 0, 0))
        b.step(AppendEntries(0, "c", "b", 0, 0, (), 0))
    assert b.election_elapsed == before


# ------------------------------------------------------------------------------ terms


@pytest.mark.parametrize(
    "reply",
    [
        AppendEntriesResp(7, "b", "a", False, 0),
        AppendEntriesResp(7, "b", "a", True, 1),
        HeartbeatResp(7, "b", "a", 0),
        InstallSnapshotResp(7, "b", "a", 0),
        RequestVoteResp(7, "b", "a", False),
        RequestVoteResp(7, "b", "a", False, pre_vote=True),
        AppendEntries(7, "b", "a", 0, 0, (), 0),
        Heartbeat(7, "b", "a", 0, 0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_any_higher_term_makes_leader_and_candidate_step_down(reply: Message) -> None:
    """§3.3 / pitfall: a server that sees a higher term in any reply or request (other than a
    vote request it ignores under §4.2.3) adopts the term and becomes a follower — a leader and a
    candidate alike."""
    net = settled()
    a = net.node("a")
    a.step(reply)
    assert (a.role, a.term) == (Role.FOLLOWER, 7)

    net = Net()
    a = net.node("a")
    a.campaign()
    assert a.role == Role.CANDIDATE
    a.step(reply)
    assert (a.role, a.term) == (Role.FOLLOWER, 7)


def test_replies_from_older_terms_are_ignored() -> None:
    """§3.3 / pitfall: a reply from an older term is stale and must change nothing: an old
    AppendEntriesResp does not move a follower's match, an old granted vote is not counted."""
    net = settled(leader="b")
    net.expire_leases()
    net.elect("a")  # term 2
    a = net.node("a")
    match_b = a.progress["b"].match
    a.step(AppendEntriesResp(1, "b", "a", True, 50))
    a.step(AppendEntriesResp(1, "b", "a", False, match_b, 1, 0))
    a.step(HeartbeatResp(1, "b", "a", 99))
    assert a.progress["b"].match == match_b and a.progress["b"].acked_seq < 99
    assert a.role == Role.LEADER and a.term == 2

    net = Net()
    b = net.node("b")
    b.campaign()  # term 1
    net.expire_leases("b")
    b.campaign()  # term 2
    b.step(RequestVoteResp(1, "a", "b", True))
    b.step(RequestVoteResp(1, "c", "b", True))
    assert b.role == Role.CANDIDATE, "granted votes of term 1 elected a term-2 candidate"


def test_terms_never_decrease_across_restart_of_every_node() -> None:
    """Pitfall / §3.8 (persisted state): currentTerm is durable before any message that depends on
    it leaves, so after a restart of every node no node's term is lower than before."""
    rng = random.Random(7)
    net = Net(("a", "b", "c", "d", "e"))
    for round_ in range(12):
        for nid in rng.sample(net.ids, rng.randrange(0, 3)):
            net.isolate(nid)
        net.run(rng.randrange(E, 4 * E))
        net.heal()
        before = {i: net.node(i).term for i in net.ids}
        for i in net.ids:  # everyone at once, mid-flight: what is on disk is all there is
            net.crash(i)
        for i in net.ids:
            net.restart(i)
        after = {i: net.node(i).term for i in net.ids}
        assert all(after[i] >= before[i] for i in net.ids), (round_, before, after)
    assert max(net.node(i).term for i in net.ids) > 3, "the schedule should have run several elections"


def test_new_leader_appends_a_noop_of_its_term() -> None:
    """§3.6.2 / §6.4: a new leader appends a no-op entry of its own term at once, so that it
    commits an entry of its term (and learns the commit index) without waiting for a client."""
    net = settled()
    net.propose("a", b"x")
    net.expire_leases()
    b = net.node("b")
    b.campaign()
    last = b.log.last_index
    net.deliver_where(is_msg(RequestVote, RequestVoteResp))
    assert b.role == Role.LEADER
    noop = b.log.entry(b.log.last_index)
    assert (noop.index, noop.term, noop.kind) == (last + 1, b.term, EntryKind.NOOP)
    net.deliver()
    assert b.commit_index == noop.index
    net.tick("b")  # followers learn the commit index with the next append or heartbeat
    net.deliver()
    assert all(net.node(i).commit_index == noop.index for i in net.ids)


# ------------------------------------------------------------------------------ partitions


@pytest.mark.parametrize("first_leader", [None, "a", "b"])
def test_line_partition_settles_on_a_stable_leader(first_leader: str | None) -> None:
    """Pitfall (asymmetric partitions, §9.6 + §6.2): in a line A–B–C (A and C cannot talk, B talks to
    both), PreVote + CheckQuorum keep one leader in one term: the end that cannot see the leader
    cannot win a pre-vote (B is in lease) and so never disrupts it."""
    net = Net()
    if first_leader:
        net.elect(first_leader)
    net.block(bridge("a", "b", "c"))
    observe_leaders(net, 6 * E)  # settle
    window = observe_leaders(net, 20 * E)
    assert len(set(window)) == 1 and window[0][0] is not None, sorted(set(window), key=str)
    if first_leader:
        assert window[0] == (first_leader, 1), "the healthy leader must not have been disturbed"


@pytest.mark.parametrize("first_leader", [None, "a", "d"])
def test_five_nodes_two_seeing_one_peer_each_settle_on_a_stable_leader(first_leader: str | None) -> None:
    """Pitfall (partial partitions): five nodes where D sees only A and E sees only B still
    settle on one leader in one term (a leader among the well-connected A, B, C)."""
    net = Net(("a", "b", "c", "d", "e"))
    if first_leader:
        net.elect(first_leader)
    for x, seen in (("d", "a"), ("e", "b")):
        net.block(isolate(x, [o for o in net.ids if o not in (x, seen)]))
    observe_leaders(net, 8 * E)
    window = observe_leaders(net, 20 * E)
    assert len(set(window)) == 1, sorted(set(window), key=str)
    assert window[0][0] in ("a", "b", "c")
