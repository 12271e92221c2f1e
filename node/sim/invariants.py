"""The safety properties the simulator checks after every step, one named function each.

Every function takes the run's :class:`History` (what has been observed so far, across crashes and
restarts) plus the observation at hand, records what it needs, and raises
:class:`InvariantViolation` naming itself when the property fails. The cluster turns that into a
failure carrying the seed, the step, a short trace and the replay command.

Checks are incremental — each looks only at what the step changed — so that they can run after every
step of a long soak. ``log_matching_full`` re-checks whole live logs periodically.

What "committed" means here: an index is committed once any node's commit index covers it. The
entry it names is the one in that node's log (recorded by :func:`commit_safety`); the *commit term*
is the lowest term any node was in when its commit index first covered it — the entry was committed
by the leader of that term or an earlier one, so every leader of a *higher* term must hold it
(:func:`leader_completeness`). A stale leader elected late in a lower term may lack it; that is
allowed by Raft and not flagged.

Restart rule (documented decision): a restarted node's commit index may come back *lower* than
before the crash — the hard state's commit is persisted lazily and commitIndex is volatile state in
Raft (Figure 2). It must come back at least at its snapshot index, its applied index restarts at the
snapshot index, and the state machine re-applies the same entries (checked by
:func:`state_machine_safety`). Within one incarnation term, commit and applied never go backwards.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from raftstate.node.sim.statemachine import chain_step
from raftstate.raft import Entry, RaftLog, SnapshotMeta
from raftstate.raft.testing.disk import MemDisk


class InvariantViolation(AssertionError):
    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        self.detail = detail
        super().__init__(f"{name}: {detail}")


def _fail(name: str, detail: str) -> InvariantViolation:
    return InvariantViolation(name, detail)


@dataclass(slots=True)
class NodeMarks:
    """What was last seen of one incarnation of a node."""

    incarnation: int = 0
    term: int = 0
    commit: int = 0
    applied: int = 0


@dataclass(slots=True)
class PendingRead:
    node: str
    incarnation: int
    #: the state a linearizable read begun now must reflect at least (index)
    required: int
    step: int


@dataclass(slots=True)
class History:
    #: term -> the one node that led it
    leaders: dict[int, str] = field(default_factory=dict)
    #: (index, term) -> (the entry, term of the entry before it or None if unknown); across history
    log_index: dict[tuple[int, int], tuple[Entry, int | None]] = field(default_factory=dict)
    #: index -> the committed entry (first seen committed in some node's log)
    committed: dict[int, Entry] = field(default_factory=dict)
    #: index -> lowest term in which some node's commit index covered it
    commit_term: dict[int, int] = field(default_factory=dict)
    max_committed: int = 0
    #: index -> the entry first applied at it
    applied: dict[int, Entry] = field(default_factory=dict)
    #: canon_chain[i]: state-machine chain after applying the committed prefix 1..i (contiguous)
    canon_chain: list[int] = field(default_factory=lambda: [0])
    #: (node, term) -> the candidate it voted for in that term
    votes: dict[tuple[str, int], str] = field(default_factory=dict)
    #: node -> highest term it ever put in a message
    max_term_sent: dict[str, int] = field(default_factory=dict)
    #: node -> highest term its disk ever held
    disk_term: dict[str, int] = field(default_factory=dict)
    marks: dict[str, NodeMarks] = field(default_factory=dict)
    #: writes acknowledged to a client: index -> data
    acked: dict[int, bytes] = field(default_factory=dict)
    max_acked_index: int = 0
    #: highest state (applied index) any completed read returned
    max_read_index: int = 0
    reads: dict[Hashable, PendingRead] = field(default_factory=dict)

    def read_floor(self) -> int:
        """What a read begun now must observe: every acknowledged write and every completed read."""
        return max(self.max_acked_index, self.max_read_index)

    def extend_canon(self) -> None:
        chain, applied = self.canon_chain, self.applied
        while len(chain) in applied:
            chain.append(chain_step(chain[-1], applied[len(chain)]))


# ===================================================================== elections


def election_safety(h: History, node: str, term: int) -> bool:
    """At most one leader per term, across the whole history. Returns True for a new leader."""
    cur = h.leaders.get(term)
    if cur is None:
        h.leaders[term] = node
        return True
    if cur != node:
        raise _fail("election_safety", f"two leaders in term {term}: {cur} and {node}")
    return False


def vote_stability(h: History, node: str, term: int, candidate: str) -> None:
    """A node votes for at most one candidate per term — also across crashes and restarts."""
    key = (node, term)
    cur = h.votes.get(key)
    if cur is None:
        h.votes[key] = candidate
    elif cur != candidate:
        raise _fail("vote_stability", f"{node} voted for {cur} and then for {candidate} in term {term}")


def vote_remembered(h: History, node: str, term: int, vote: str | None) -> None:
    """A node restarted in a term in which a vote of its own left the node (a grant, or its own
    RequestVote) must come back remembering that vote, or it could vote twice in the term."""
    sent = h.votes.get((node, term))
    if sent is not None and vote != sent:
        raise _fail(
            "vote_stability", f"{node} voted for {sent} in term {term} but restarted with vote {vote}"
        )


def term_monotonic(h: History, node: str, term: int, *, where: str) -> None:
    """A node's term never goes down: not in memory, not on disk, not across a restart (where it must
    be at least the highest term the node ever revealed in a message)."""
    floor = h.disk_term.get(node, 0) if where != "memory" else 0
    if where == "restart":
        floor = max(floor, h.max_term_sent.get(node, 0))
    if term < floor:
        raise _fail("term_monotonic", f"{node} term {term} < {floor} ({where})")
    if where != "memory":
        h.disk_term[node] = max(h.disk_term.get(node, 0), term)


def indexes_monotonic(
    h: History, node: str, incarnation: int, term: int, commit: int, applied: int, snapshot_index: int
) -> None:
    """Within one incarnation: term, commit and applied never go backwards.
    After a restart: commit >= snapshot index and applied == snapshot index (see module doc)."""
    m = h.marks.get(node)
    if m is None or m.incarnation != incarnation:
        if not (snapshot_index <= applied <= commit):
            raise _fail(
                "indexes_monotonic",
                f"{node} restarted with snapshot {snapshot_index}, applied {applied}, commit {commit}",
            )
        h.marks[node] = NodeMarks(incarnation, term, commit, applied)
        return
    if term < m.term:
        raise _fail("term_monotonic", f"{node} term went from {m.term} to {term}")
    if commit < m.commit:
        raise _fail("indexes_monotonic", f"{node} commit index went from {m.commit} to {commit}")
    if applied < m.applied:
        raise _fail("indexes_monotonic", f"{node} applied index went from {m.applied} to {applied}")
    m.term, m.commit, m.applied = term, commit, applied


# ===================================================================== logs


def log_matching(h: History, node: str, entries: Iterable[Entry], prev_term: int | None) -> None:
    """Log Matching, history-wide: an (index, term) pair names one entry ever, and that entry always
    follows the same term at index-1 — so logs sharing an (index, term) share the whole prefix
    (by induction). ``prev_term`` is the term of the entry before the first one, None if unknown."""
    idx = h.log_index
    pt = prev_term
    for e in entries:
        key = (e.index, e.term)
        got = idx.get(key)
        if got is None:
            idx[key] = (e, pt)
        else:
            if got[0] != e:
                raise _fail("log_matching", f"{node} holds {e} but ({e.index}, {e.term}) was {got[0]}")
            if pt is not None:
                if got[1] is None:
                    idx[key] = (e, pt)
                elif got[1] != pt:
                    raise _fail(
                        "log_matching",
                        f"{node}: ({e.index}, {e.term}) follows term {pt} here, term {got[1]} elsewhere",
                    )
        pt = e.term


def log_matching_full(h: History, node: str, log: RaftLog) -> None:
    """The whole live in-memory log against the history (run periodically and at the end)."""
    if log.entries:
        log_matching(h, node, log.entries, log.snapshot_term if log.snapshot_index else None)
    for e in log.entries:
        c = h.committed.get(e.index)
        if c is not None and e.index <= log.committed and c != e:
            raise _fail("commit_safety", f"{node} has {e} committed, but {c} was committed there")


def commit_safety(h: History, node: str, node_term: int, log: RaftLog, lo: int, hi: int) -> None:
    """Indexes lo..hi just became committed on ``node`` (in ``node_term``): no two nodes ever consider
    different entries committed at one index. Records the commit term for leader completeness."""
    ct = h.commit_term
    committed = h.committed
    snap = log.snapshot_index
    for i in range(lo, hi + 1):
        t = ct.get(i)
        if t is None or node_term < t:
            ct[i] = node_term
        if i <= snap:
            continue
        e = log.entry(i)
        c = committed.get(i)
        if c is None:
            committed[i] = e
            cluster_time(h, e)
        elif c != e:
            raise _fail("commit_safety", f"{node} committed {e} at {i}, but {c} was committed there before")
    if hi > h.max_committed:
        h.max_committed = hi


def cluster_time(h: History, e: Entry) -> None:
    """Entry.time_ms never decreases along the committed sequence (leader clocks may jump back)."""
    prev = h.committed.get(e.index - 1)
    if prev is not None and prev.time_ms > e.time_ms:
        raise _fail("cluster_time", f"time goes back along the committed log: {prev} then {e}")
    nxt = h.committed.get(e.index + 1)
    if nxt is not None and e.time_ms > nxt.time_ms:
        raise _fail("cluster_time", f"time goes back along the committed log: {e} then {nxt}")


def commit_rule(node: str, term: int, log: RaftLog, commit: int) -> None:
    """§5.4.2 / Figure 8: a leader advances its commit index only by counting replicas of an entry of
    its own term (older entries commit with it, never by counting alone)."""
    t = log.term_at(commit)
    if t is not None and t != term:
        raise _fail(
            "commit_rule",
            f"leader {node} (term {term}) advanced its commit index to {commit}, an entry of term {t}",
        )


def check_quorum(node: str, term: int, isolated_ms: int) -> None:
    """A leader cut off from a quorum of its voters (crashed, frozen or partitioned away, either
    direction) steps down within about two election timeouts (CheckQuorum, §9.6); until then it
    may not serve reads (checked by linearizable_reads), after it must not believe it leads."""
    raise _fail(
        "check_quorum",
        f"{node} still leads term {term} after {isolated_ms} ms without a quorum it can reach",
    )


def leader_completeness(h: History, node: str, term: int, log: RaftLog) -> None:
    """§5.4: a leader holds every entry committed in a lower term (checked when it is elected)."""
    committed, ct = h.committed, h.commit_term
    if log.snapshot_index:
        c = committed.get(log.snapshot_index)
        t = ct.get(log.snapshot_index)
        if c is not None and t is not None and t < term and c.term != log.snapshot_term:
            raise _fail(
                "leader_completeness",
                f"new leader {node} (term {term}) has a snapshot at {log.snapshot_index} of term "
                f"{log.snapshot_term}, but {c} was committed there",
            )
    for i in range(log.snapshot_index + 1, h.max_committed + 1):
        t = ct.get(i)
        if t is None or t >= term:
            continue
        c = committed.get(i)
        if c is None:
            continue
        have = log.entry(i) if i <= log.last_index else None
        if have != c:
            raise _fail(
                "leader_completeness",
                f"new leader {node} (term {term}) lacks committed {c} (committed by term {t}); has {have}",
            )


# ===================================================================== state machine


def apply_in_order(node: str, sm_applied: int, e: Entry) -> None:
    """Entries are applied once each, in index order, with no gap."""
    if e.index != sm_applied + 1:
        raise _fail("apply_in_order", f"{node} applies index {e.index} after {sm_applied}")


def state_machine_safety(h: History, node: str, e: Entry | None, applied_index: int, chain: int) -> bool:
    """No two nodes apply different entries at one index, and a state machine (also one restored
    from a snapshot, ``e`` None) equals the committed prefix it claims. True on a first apply."""
    first = False
    if e is not None:
        got = h.applied.get(e.index)
        if got is None:
            h.applied[e.index] = e
            first = True
            if e.index == len(h.canon_chain):
                h.extend_canon()
        elif got != e:
            raise _fail("state_machine_safety", f"{node} applies {e}, but another node applied {got}")
    if applied_index < len(h.canon_chain) and h.canon_chain[applied_index] != chain:
        raise _fail(
            "state_machine_safety",
            f"{node}'s state at index {applied_index} differs from the committed prefix (chain "
            f"{chain:#x} != {h.canon_chain[applied_index]:#x})",
        )
    return first


def snapshot_integrity(h: History, node: str, meta: SnapshotMeta, applied_index: int, chain: int) -> None:
    """A snapshot (taken, installed or restored) covers exactly its index and a committed prefix."""
    if applied_index != meta.index:
        raise _fail(
            "snapshot_integrity", f"{node}: snapshot meta says {meta.index}, data has {applied_index}"
        )
    c = h.committed.get(meta.index) or h.applied.get(meta.index)
    if c is not None and (c.term != meta.term or c.time_ms != meta.time_ms):
        raise _fail("snapshot_integrity", f"{node}: snapshot {meta} does not match committed {c}")
    state_machine_safety(h, node, None, applied_index, chain)


# ===================================================================== clients


def linearizable_reads(h: History, ctx: Hashable, served_index: int) -> None:
    """A read begun at time t returns a state at least as new as every write acknowledged, and every
    read completed, before t."""
    r = h.reads.pop(ctx)
    if served_index < r.required:
        raise _fail(
            "linearizable_reads",
            f"read {ctx} on {r.node} (begun at step {r.step}) returned the state at index {served_index}, "
            f"but index {r.required} was acknowledged or read before it began",
        )
    if served_index > h.max_read_index:
        h.max_read_index = served_index


def durability(h: History, disks: dict[str, MemDisk]) -> None:
    """After a crash (of a minority, or of everyone), every committed entry is still on some disk."""
    if not disks:
        return
    floor = max(d.snapshot_index for d in disks.values())
    for i in range(floor + 1, h.max_committed + 1):
        c = h.committed.get(i)
        if c is None:
            continue
        if not any(d.holds(i, c.term) for d in disks.values()):
            raise _fail("durability", f"committed {c} is on no disk any more")


def idle_traffic(sent: int, members: int, heartbeat_rounds: float, window_ms: int) -> None:
    """An idle, healed, caught-up cluster exchanges about one heartbeat and one reply per follower
    per heartbeat interval; allow three times that. More means a message storm (e.g. replies that
    beget requests that beget replies)."""
    bound = int(3 * 2 * (members - 1) * heartbeat_rounds) + 20
    if sent > bound:
        raise _fail(
            "idle_traffic",
            f"{sent} messages in {window_ms} ms of an idle {members}-member cluster (bound {bound})",
        )
