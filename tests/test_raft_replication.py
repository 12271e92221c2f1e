"""Log replication and commitment, one rule per test (Raft dissertation, Ongaro 2014, §3.5, §3.6,
§10.2.1 for the leader writing in parallel, §10.2.2 for batching and pipelining)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftnet import Net, is_msg
from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResp,
    Membership,
    Message,
    PersistedState,
    RaftNode,
    RaftSettings,
    RequestVote,
    RequestVoteResp,
    Role,
    SnapshotMeta,
)
from raftstate.raft.progress import ProgressState
from raftstate.raft.testing import MemDisk, one_way

ABC = Membership(frozenset("abc"))
votes = is_msg(RequestVote, RequestVoteResp)


def settled(ids: tuple[str, ...] = ("a", "b", "c"), **kw: object) -> Net:
    net = Net(ids, **kw)  # type: ignore[arg-type]
    net.elect("a")
    return net


def win(net: Net, nid: str, tries: int = 4) -> None:
    """Make ``nid`` leader through real elections, delivering only election traffic."""
    for _ in range(tries):
        net.expire_leases(*[i for i in net.peers if i != nid and i not in net.down])
        net.node(nid).campaign()
        net.deliver_where(votes)
        if net.node(nid).role == Role.LEADER:
            return
    raise AssertionError(f"{nid} could not win an election")


def appends_to(net: Net, dst: str, since: int = 0) -> list[AppendEntries]:
    return [m for m in net.sent[since:] if isinstance(m, AppendEntries) and m.dst == dst]


def rejects_from(net: Net, src: str, since: int = 0) -> list[AppendEntriesResp]:
    return [
        m for m in net.sent[since:] if isinstance(m, AppendEntriesResp) and m.src == src and not m.success
    ]


def follower(
    entries: list[Entry], *, term: int, snapshot: SnapshotMeta | None = None, commit: int = 0
) -> Net:
    """A net whose node b starts from the given disk state (a and c are fresh)."""
    net = Net()
    d = net.peers["b"].disk
    d.hard_state, d.snapshot, d.entries = HardState(term, None, commit), snapshot, list(entries)
    net.restart("b")
    return net


def ents(first: int, *terms: int) -> list[Entry]:
    return [Entry(first + k, t, 0, data=b"%d" % (first + k)) for k, t in enumerate(terms)]


# ------------------------------------------------------------------------------ consistency check


def test_consistency_check_rejects_with_a_backtracking_hint() -> None:
    """§3.5: a follower accepts an AppendEntries only if its log holds an entry at prev_index with
    prev_term; otherwise it refuses and changes nothing. The refusal carries a hint (§3.5's
    optimization): its last index + 1 when its log is too short, else the first index of its
    conflicting term, with that term."""
    net = follower(ents(1, 1, 1, 2, 2, 2), term=2)
    b = net.node("b")
    b.step(AppendEntries(3, "a", "b", 9, 3, (), 0))  # beyond b's log
    b.step(AppendEntries(3, "a", "b", 4, 3, ents(5, 3), 0))  # b has term 2 at 4, not 3
    net.process("b")
    r1, r2 = [m for m in net.pending() if isinstance(m, AppendEntriesResp)]
    assert (r1.success, r1.index, r1.hint_index, r1.hint_term) == (False, 9, 6, 0)
    assert (r2.success, r2.index, r2.hint_index, r2.hint_term) == (False, 4, 3, 2)
    assert net.log("b") == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]


def test_fast_backtracking_takes_few_round_trips() -> None:
    """§3.5 (optimization): with the conflict hint, a follower far behind and with a divergent tail
    is repaired in a couple of round trips — not one per entry."""
    net = Net(("a", "b", "c"))
    net.elect("a")
    for k in range(10):
        net.propose("a", b"base%d" % k)  # [1..11] term 1, everywhere
    net.expire_leases()
    net.elect("c")  # 12: term-2 no-op, everywhere
    net.isolate("c")
    for k in range(20):
        net.node("c").propose(b"lost%d" % k)  # 13..32: term 2, only on c (the divergent tail)
    net.deliver()
    win(net, "a")  # term 3: 13 no-op
    net.deliver()
    for k in range(100):
        net.propose("a", b"new%d" % k)  # 14..113 on a and b
    win(net, "b")  # term 4, so the new leader starts from next = its last index + 1
    net.deliver()
    b = net.node("b")
    assert (b.role, b.log.last_index) == (Role.LEADER, 114)
    assert net.node("c").log.last_index == 32 and net.node("c").role == Role.LEADER

    mark = len(net.sent)
    net.heal()
    net.tick("b")  # one heartbeat round starts the repair
    net.deliver()
    assert net.log("c") == net.log("b")
    assert len(rejects_from(net, "c", mark)) <= 2
    with_entries = [m for m in appends_to(net, "c", mark) if m.entries]
    assert len(with_entries) <= 3, [(m.prev_index, len(m.entries)) for m in with_entries]


def test_idle_cluster_goes_quiet() -> None:
    """§3.5 / §10.2.2: once every follower has every entry and knows the commit index, the leader
    has nothing to send until the next heartbeat: without ticks the network goes quiet. (A leader
    that answers every successful AppendEntriesResp with another, empty AppendEntries ping-pongs
    with each follower forever.)"""
    net = Net()
    net.node("a").campaign()
    delivered = net.deliver(limit=500)
    assert net.node("a").role == Role.LEADER
    assert not net.inbox and delivered < 50, f"{delivered} messages and {len(net.inbox)} still queued"


# ------------------------------------------------------------------------------ batching, pipelining


def _replicating(s: RaftSettings) -> Net:
    net = settled(settings=s)
    assert all(str(net.node("a").progress[p].state) == "replicate" for p in "bc")
    return net


def test_batching_many_proposals_few_appends() -> None:
    """§10.2.2 (batching): proposals that arrive together leave in as few AppendEntries as the
    limits allow — at most max_entries_per_msg entries and max_bytes_per_msg bytes per message (a
    single larger entry still goes, alone)."""
    net = _replicating(RaftSettings())
    for k in range(50):
        net.node("a").propose(b"p%d" % k)
    net.process("a")
    sizes = [len(m.entries) for m in net.pending(is_msg(AppendEntries, dst="b"))]
    assert sizes == [50]

    net = _replicating(RaftSettings(max_entries_per_msg=8))
    for k in range(50):
        net.node("a").propose(b"p%d" % k)
    net.process("a")
    sizes = [len(m.entries) for m in net.pending(is_msg(AppendEntries, dst="b"))]
    assert sizes == [8, 8, 8, 8, 8, 8, 2]

    net = _replicating(RaftSettings(max_bytes_per_msg=250))
    a = net.node("a")
    for data in [b"x" * 100] * 5 + [b"y" * 1000] + [b"z" * 100]:
        a.propose(data)
    net.process("a")
    batches = [[len(e.data) for e in m.entries] for m in net.pending(is_msg(AppendEntries, dst="b"))]
    assert batches == [[100, 100], [100, 100], [100], [1000], [100]]
    net.deliver()
    assert net.log("b") == net.log("a")


def test_pipelining_is_bounded_by_max_inflight_msgs() -> None:
    """§10.2.2 (pipelining): a leader that knows a follower's match streams appends without
    waiting for each reply, but keeps at most max_inflight_msgs unanswered ones; a follower whose
    match is unknown (probe) gets one at a time."""
    s = RaftSettings(max_entries_per_msg=1, max_inflight_msgs=4)
    net = _replicating(s)
    a = net.node("a")
    for k in range(10):
        a.propose(b"p%d" % k)
    net.process("a")
    assert len(net.pending(is_msg(AppendEntries, dst="b"))) == 4
    for _ in range(200):  # one message at a time (bounded: see test_idle_cluster_goes_quiet)
        net.deliver(limit=1)
        unanswered = len(net.pending(is_msg(AppendEntries, dst="b")))
        assert unanswered <= 4 and len(a.progress["b"].inflight) <= 4
        if a.commit_index == 11 and net.log("b") == net.log("a"):
            break
    assert net.log("b") == net.log("a") and a.commit_index == 11

    net = Net(settings=s)
    net.node("a").campaign()
    net.deliver_where(votes)  # a leads; its no-op is queued for b and c, nothing acknowledged yet
    for k in range(5):
        net.node("a").propose(b"p%d" % k)
    net.process("a")
    assert len(net.pending(is_msg(AppendEntries, dst="b"))) == 1


# ------------------------------------------------------------------------------ follower safety


def test_stale_duplicate_and_empty_appends_never_truncate_matching_entries() -> None:
    """§3.5 / pitfall: a follower truncates only at a real conflict (same index, other term). A
    heartbeat, a duplicated or delayed AppendEntries whose entries it already holds, or an empty
    append with an old prev_index leave its longer log intact — and the reply names the end of
    what the request covered, not the follower's last index."""
    net = settled()
    first = appends_to(net, "b")[0]
    for k in range(4):
        net.propose("a", b"x%d" % k)
    assert net.log("b") == [(i, 1) for i in range(1, 6)]
    net.inbox.clear()
    b = net.node("b")
    mid = AppendEntries(1, "a", "b", 1, 1, tuple(b.log.slice(2, 3)), 5)
    for msg in (first, mid, first, AppendEntries(1, "a", "b", 2, 1, (), 5), Heartbeat(1, "a", "b", 5, 0)):
        b.step(msg)
    net.process("b")
    assert net.log("b") == [(i, 1) for i in range(1, 6)]
    got = [m.index for m in net.pending(is_msg(AppendEntriesResp))]
    assert got == [1, 3, 1, 2]


@st.composite
def append_case(draw: st.DrawFn) -> tuple[list[int], list[int], int, int, AppendEntries]:
    """A leader log, a follower log sharing a committed prefix with it (then diverging), the
    follower's snapshot and commit index, and one AppendEntries the leader could have sent."""
    lead_terms = sorted(draw(st.lists(st.sampled_from([2, 4, 6]), min_size=1, max_size=25)))
    shared = draw(st.integers(0, len(lead_terms)))
    floor = lead_terms[shared - 1] if shared else 1
    tail = sorted(draw(st.lists(st.sampled_from([t for t in (1, 3, 5, 7) if t >= floor]), max_size=8)))
    foll_terms = lead_terms[:shared] + tail
    commit = draw(st.integers(0, shared))
    snap = draw(st.integers(0, commit))
    prev = draw(st.integers(0, len(lead_terms)))
    count = draw(st.integers(0, len(lead_terms) - prev))
    entries = tuple(Entry(i, lead_terms[i - 1], 0) for i in range(prev + 1, prev + count + 1))
    msg_commit = draw(st.integers(0, len(lead_terms) + 10))  # even beyond any log: must not crash
    prev_term = lead_terms[prev - 1] if prev else 0
    msg = AppendEntries(8, "a", "b", prev, prev_term, entries, msg_commit)
    return lead_terms, foll_terms, commit, snap, msg


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(append_case())
def test_any_append_is_accepted_or_rejected_never_an_exception(
    case: tuple[list[int], list[int], int, int, AppendEntries],
) -> None:
    """§3.5 / pitfall: whatever a legitimate leader sends — prev beyond the follower's log, inside
    its snapshot, overlapping its tail, a commit index beyond its log — the follower accepts (and
    then agrees with the leader up to the end of the request) or refuses with a hint; it never
    raises, never loses a committed or matching entry, and never commits past what it verified."""
    lead, foll, commit, snap, msg = case
    entries = [Entry(i + 1, t, 0) for i, t in enumerate(foll)]
    meta = SnapshotMeta(snap, foll[snap - 1], ABC) if snap else None
    node = RaftNode(
        "b",
        bootstrap=ABC,
        state=PersistedState(HardState(7, None, commit), meta, tuple(entries[snap:])),
        rng=random.Random(0),
    )
    node.step(msg)
    (resp,) = [o.msg for o in node.ready().messages]
    assert isinstance(resp, AppendEntriesResp)
    log = node.log
    after = {i: log.term_at(i) for i in range(log.first_index, log.last_index + 1)}
    end = msg.prev_index + len(msg.entries)
    assert log.committed <= log.last_index
    assert log.committed >= commit
    for i in range(max(snap, 0) + 1, commit + 1):
        assert after.get(i) == lead[i - 1], "a committed entry changed"
    if resp.success:
        assert resp.index >= end
        for i in range(log.first_index, resp.index + 1):
            assert after[i] == lead[i - 1], f"follower disagrees with the leader at {i} after accepting"
        for i, t in enumerate(foll, start=1):
            if i > end and i <= len(lead) and t == lead[i - 1] and i > snap:
                assert after.get(i) == t, f"matching entry {i} was truncated"
        assert log.committed <= max(commit, min(msg.commit, resp.index))
    else:
        assert msg.prev_index > snap
        assert [after.get(i) for i in range(snap + 1, len(foll) + 1)] == foll[snap:], (
            "a refusal changed the log"
        )
        assert 0 < resp.hint_index <= msg.prev_index
        assert log.committed == max(commit, snap)


def test_commit_index_beyond_the_local_log_never_crashes() -> None:
    """Pitfall: a commit index larger than the follower's log (a confused or lagging view) is
    clamped to what the follower holds and verified; it never raises."""
    net = follower(ents(1, 1, 1, 1), term=1)
    b = net.node("b")
    b.step(Heartbeat(1, "a", "b", 1000, 0))
    assert b.commit_index == 3
    b.step(AppendEntries(1, "a", "b", 1, 1, (), 1000))
    assert b.commit_index == 3
    b.step(AppendEntries(2, "c", "b", 9, 2, (), 1000))
    assert b.commit_index == 3


# ------------------------------------------------------------------------------ leader bookkeeping


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_duplicated_or_reordered_append_replies_never_move_match_backwards(data: st.DataObject) -> None:
    """Pitfall: a follower's match index is taken from the request each reply answers, so
    duplicated and reordered AppendEntriesResp (and stale refusals) never move it backwards, and
    the leader ends at the highest index acknowledged."""
    net = _replicating(RaftSettings(max_entries_per_msg=1, max_inflight_msgs=16))
    a = net.node("a")
    for k in range(8):
        a.propose(b"p%d" % k)
    net.process("a")
    for m in net.pending(is_msg(AppendEntries, dst="b")):
        net.node("b").step(m)
    net.drop()
    net.process("b")
    acks = net.pending(is_msg(AppendEntriesResp, src="b"))
    assert [m.index for m in acks] == list(range(2, 10))
    stale = AppendEntriesResp(1, "b", "a", False, 1, 1, 0)
    script = data.draw(st.lists(st.sampled_from([*acks, stale]), min_size=1, max_size=30))
    net.drop()
    prev = a.progress["b"].match
    for m in script:
        a.step(m)
        match = a.progress["b"].match
        assert match >= prev and a.progress["b"].next > match
        prev = match
    best = max((m.index for m in script if m.success), default=1)
    assert a.progress["b"].match == best


def test_figure8_old_term_entry_on_a_majority_is_not_committed() -> None:
    """§3.6.2, Figure 3.7 (Figure 8 of the paper): a leader never commits an entry of an older
    term by counting replicas, even once a majority stores it — a later leader may still overwrite
    it. Here S1 (term 3) spreads X (term 1) to S1, S2, S3 but does not commit it; S5 then wins
    and X disappears from every log without ever being applied."""
    net = Net(("s1", "s2", "s3", "s4", "s5"), settings=RaftSettings(max_entries_per_msg=1))
    net.elect("s1")  # 1: no-op, everywhere
    net.block(one_way("s1", ["s3", "s4", "s5"]))
    x_index = net.node("s1").propose(b"X")  # 2: X (term 1), on S1 and S2 only
    net.deliver()
    net.heal()
    net.crash("s1")

    win(net, "s5")  # votes S3, S4, S5; its no-op (2, term 2) stays on S5
    net.drop()
    net.crash("s5")

    net.restart("s1")
    win(net, "s1")  # needs S2 and S3 or S4; a later term (3)
    s1 = net.node("s1")
    assert s1.term >= 3 and s1.log.term_at(x_index) == 1

    def spread_x_only(m: Message) -> bool:
        if m.dst == "s4":
            return False
        if m.dst == "s3" and isinstance(m, AppendEntries):  # S3 may get X but not S1's no-op
            return not (
                net.node("s3").log.last_index >= x_index and any(e.index > x_index for e in m.entries)
            )
        return True

    net.deliver_where(spread_x_only)
    net.drop()
    holders = [i for i in ("s1", "s2", "s3") if net.node(i).log.term_at(x_index) == 1]
    assert holders == ["s1", "s2", "s3"], "X should be on a majority"
    assert s1.commit_index < x_index, "an old-term entry was committed by counting replicas"

    net.crash("s1")
    net.restart("s5")
    win(net, "s5")
    net.deliver()
    for i in ("s2", "s3", "s4", "s5"):
        assert net.node(i).log.term_at(x_index) == 2, f"{i} still has X"
        assert b"X" not in net.applied_data(i)


def test_figure8_old_term_entry_commits_with_a_current_term_entry() -> None:
    """§3.6.2: once an entry of the leader's current term is stored on a majority and committed,
    every earlier entry (the old-term X included) is committed with it — and then no server with
    an older log can win an election to overwrite it."""
    net = Net(("s1", "s2", "s3", "s4", "s5"))
    net.elect("s1")
    net.block(one_way("s1", ["s3", "s4", "s5"]))
    x_index = net.node("s1").propose(b"X")
    net.deliver()
    net.heal()
    net.crash("s1")
    win(net, "s5")
    net.drop()
    net.crash("s5")
    net.restart("s1")
    win(net, "s1")
    net.block(one_way("s1", "s4"))
    net.deliver()
    s1 = net.node("s1")
    assert s1.commit_index == x_index + 1 and s1.log.term_at(x_index + 1) == s1.term
    assert b"X" in net.applied_data("s1")
    net.crash("s1")
    net.restart("s5")
    net.heal()
    for _ in range(3):
        net.expire_leases()
        net.node("s5").campaign()
        net.deliver_where(votes)
        assert net.node("s5").role != Role.LEADER


def test_leader_counts_itself_only_after_its_own_persist() -> None:
    """Pitfall / §10.2.1: the leader may send entries before its own fsync finishes, but it counts
    itself toward the commit quorum only once its own write is durable. With C cut off, B's
    acknowledgement alone (1 of 3 durable copies) must not commit."""
    net = settled()
    net.isolate("c")
    net.hold("a")
    a = net.node("a")
    idx = a.propose(b"x")
    net.deliver()
    assert net.node("b").log.last_index == idx and a.progress["b"].match == idx
    assert a.commit_index < idx
    assert net.peers["a"].disk.entries[-1].index < idx
    net.release("a")
    net.deliver()
    assert a.commit_index == idx and net.applied_data("a") == [b"x"]


def test_leader_crash_before_its_own_persist_loses_nothing_acknowledged() -> None:
    """Pitfall (acknowledged means durable): if the leader crashes before its own fsync, an entry
    that only one follower stored was never committed, so it may be lost, and nobody applied it."""
    net = settled()
    net.isolate("c")
    net.hold("a")
    net.node("a").propose(b"x")
    net.deliver()
    net.crash("a")
    net.heal()
    assert all(b"x" not in net.applied_data(i) for i in net.ids)


def test_entries_are_applied_once_and_in_order_across_restarts() -> None:
    """§3.5 / pitfall: each committed entry reaches the state machine once and in log order; a
    restarted node resumes right after its snapshot (its state machine is rebuilt from it) rather
    than re-applying earlier entries or skipping any."""
    net = settled()

    def check() -> None:
        lead = net.leader()
        assert lead is not None
        for i in net.ids:
            idx = [e.index for e in net.peers[i].applied]
            assert idx == list(range(1, len(idx) + 1)), f"{i} applied {idx}"
            assert [e.data for e in net.peers[i].applied] == [
                e.data for e in net.peers[lead].applied[: len(idx)]
            ]

    for rnd in range(6):
        for k in range(5):
            net.propose(net.leader() or "a", b"%d-%d" % (rnd, k))
        if rnd % 2:
            net.compact("b")
        victim = net.ids[rnd % 3]
        net.crash(victim)
        net.restart(victim)
        rd_first = None
        if net.node(victim).has_ready():
            rd = net.node(victim).ready()
            if rd.committed:
                rd_first = rd.committed[0].index
            net.peers[victim].applied.extend(rd.committed)
            net.node(victim).advance(rd)
        snap = net.peers[victim].disk.snapshot
        if rd_first is not None:
            assert rd_first == (snap.index if snap else 0) + 1
        net.tick(times=1)
        net.deliver()
        if net.leader() is None:
            net.run(3 * 10)
        check()
    net.run(3)
    check()
    assert len(net.applied_data("a")) == 30


def test_duplicated_stale_refusal_never_moves_match_backwards() -> None:
    """Pitfall: a follower's match index never moves backwards on a duplicated or reordered reply.
    Scenario: B missed entries 2..5; the leader's next append (prev 5) is refused with "my log
    ends at 1"; the leader repairs B (match 5), later falls back to probing it (as after a
    heartbeat round without progress: next = match + 1 = 6), and then the network delivers a
    duplicate of that old refusal.
    It answers an append the leader no longer cares about and must be ignored."""
    net = settled()
    net.block(one_way("a", "b"))
    for k in range(4):
        net.propose("a", b"x%d" % k)  # 2..5 on a and c
    net.heal()
    net.tick("a")  # a heartbeat; b's reply makes a send what b lacks
    net.deliver()
    a = net.node("a")
    refusals = [m for m in net.sent if isinstance(m, AppendEntriesResp) and m.src == "b" and not m.success]
    assert [(m.index, m.hint_index, m.hint_term) for m in refusals] == [(5, 2, 0)]
    assert a.progress["b"].match == 5
    a.progress["b"].become_probe()  # back to probing from match + 1 (what a stalled round does)
    assert (a.progress["b"].state, a.progress["b"].next) == (ProgressState.PROBE, 6)
    a.step(refusals[0])  # the network delivers a duplicate of the old refusal
    assert a.progress["b"].match == 5


def test_duplicated_lost_data_report_never_moves_match_backwards() -> None:
    """Pitfall: duplicated or reordered replies never move a match index backwards. The core lets
    a follower whose disk was wiped say so in a heartbeat reply (``lost_data_next_index``) so the
    leader re-probes it; once the follower has caught up again, a network duplicate of that old
    report must not rewind its match (it is a reply to a heartbeat of long ago)."""
    net = settled()
    for k in range(5):
        net.propose("a", b"%d" % k)
    net.tick("a")
    net.deliver()
    a = net.node("a")
    net.crash("c")
    net.peers["c"].disk = MemDisk()  # wiped
    net.restart("c")
    mark = len(net.sent)
    net.tick("a")
    net.deliver()
    reports = [m for m in net.sent[mark:] if isinstance(m, HeartbeatResp) and m.lost_data_next_index]
    assert reports, "the wiped follower did not report its loss"
    net.tick("a")
    net.deliver()
    assert a.progress["c"].match == a.log.last_index == 6
    a.step(reports[0])  # the network delivers a duplicate of the old report
    assert a.progress["c"].match == 6


def test_appends_lost_while_replicating_are_resent_after_a_heartbeat_round() -> None:
    """Nothing tells the core that a peer is unreachable (etcd has ReportUnreachable; here the
    transport keeps each peer's queue across redials, and only a frame lost with a broken link or
    an overflowing queue goes missing). A leader that pipelined appends into the void finds out
    from the next heartbeat replies — no progress over a round, or an append the follower cannot
    place — falls back to probing, and resends what the follower lacks."""
    net = settled()
    for k in range(3):
        net.propose("a", b"%d" % k)
    a, b = net.node("a"), net.node("b")
    assert a.progress["b"].state == ProgressState.REPLICATE and a.progress["b"].match == a.log.last_index
    net.cut |= {("a", "b")}
    net.propose("a", b"lost")  # pipelined to b and dropped; c acknowledges, so it commits
    net.cut -= {("a", "b")}
    assert b.log.last_index == a.log.last_index - 1 and a.progress["b"].inflight
    for _ in range(2):
        net.tick("a")
        net.deliver()
    assert b.log.last_index == a.log.last_index and a.progress["b"].match == a.log.last_index
    assert net.applied_data("b")[-1] == b"lost"
