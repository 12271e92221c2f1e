"""RaftNode: the consensus algorithm as a deterministic state machine.

Inputs:  tick(now_ms), step(msg), propose(data), propose_conf_change(cc), read_index(ctx),
         transfer_leadership(target), campaign(), compact(index), persisted(index, term),
         advance(ready).
Outputs: ready() -> Ready (see raft/ready.py for the persist → send → apply contract).

Rules implemented here, by section of the Raft dissertation (Ongaro 2014):
  §3.4   elections with randomized timeouts; one vote per term, durable before the reply
  §3.5   log replication, consistency check, conflict truncation only at a real term mismatch
  §3.6   commit only entries of the current term by counting (Figure 8); older ones commit with them
  §3.10  leadership transfer (TimeoutNow)
  §4.1–4.3 single-server membership changes (effective on append), learners, removing the leader
  §5     snapshots and InstallSnapshot
  §6.4   ReadIndex reads, only after a no-op of the current term commits
  §9.6   PreVote, and CheckQuorum (a leader without a quorum for an election timeout steps down;
         followers that hear from a leader ignore vote requests for that long — the "leader lease")
Plus: every entry carries the leader's clock (``time_ms``), clamped so it never decreases along
the log, which gives the state machine a monotonic cluster time across leader changes.

Role changes happen only in the ``_become_*`` methods (and ``_refresh_follower_role``, which
moves a follower to learner and back as the membership changes); each asserts it is entered from a
legal role (:data:`_ENTERED_FROM`) and the term/vote/leader invariants it leaves behind. Every
Ready is checked when it is made and again when ``advance`` takes it back (``_check_ready_*``).
Small methods are deliberate override points: the simulator's mutation tests subclass RaftNode to
break one rule at a time (so the assertions here stay off the rules the mutants break: the
simulator's invariants must be the ones that catch those).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

from raftstate.raft.errors import ConfChangeInProgress, LeadershipTransferInProgress, NotLeader
from raftstate.raft.log import RaftLog
from raftstate.raft.messages import (
    AppendEntries,
    AppendEntriesResp,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    Membership,
    Message,
    RequestVote,
    RequestVoteResp,
    SnapshotMeta,
    TimeoutNow,
)
from raftstate.raft.progress import Progress, ProgressState
from raftstate.raft.ready import (
    Outbound,
    PersistedState,
    ReadState,
    Ready,
    Role,
    SnapshotToInstall,
    SoftState,
)
from raftstate.raft.settings import RaftSettings


class Rng(Protocol):
    """The only randomness the core uses; ``random.Random`` fits. Inject a seeded one."""

    def randrange(self, start: int, stop: int, /) -> int: ...


#: The roles each ``_become_*`` may be entered from, and why (etcd's become* panic the same way).
#: A leader is made only from a candidate that won; nobody campaigns while leading: a leader that
#: loses its quorum or sees a higher term becomes a follower first. Learners never campaign.
_ENTERED_FROM: dict[Role, tuple[frozenset[Role], str]] = {
    Role.FOLLOWER: (frozenset(Role), "any role may step down to follower"),
    Role.PRE_CANDIDATE: (
        frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
        "a pre-vote starts only from a follower, or a (pre-)candidate whose election timed out",
    ),
    Role.CANDIDATE: (
        frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
        "an election starts only from a follower, or a (pre-)candidate whose election timed out",
    ),
    Role.LEADER: (frozenset({Role.CANDIDATE}), "only a candidate that won its election becomes leader"),
}


@dataclass(slots=True)
class _PendingRead:
    ctx: Hashable
    index: int
    #: read round: confirmed once a quorum acknowledged a heartbeat with seq >= this
    seq: int


class RaftNode:
    def __init__(
        self,
        node_id: str,
        *,
        bootstrap: Membership,
        state: PersistedState = PersistedState(),
        settings: RaftSettings = RaftSettings(),
        rng: Rng,
        now_ms: int = 0,
    ) -> None:
        self.id = node_id
        self.settings = settings
        self.rng = rng
        self.now_ms = now_ms
        hs = state.hard_state
        self.term: int = hs.term
        self.vote: str | None = hs.vote
        self.leader: str | None = None
        self.role: Role = Role.FOLLOWER
        self.log = RaftLog(state.snapshot, state.entries, hs.commit)

        # Membership history: (index, membership) of every config entry still in the log, on top
        # of the base (snapshot's membership, or the bootstrap one). The latest is in effect (§4.1).
        self._base_membership = state.snapshot.membership if state.snapshot else bootstrap
        self._conf_history: list[tuple[int, Membership]] = []
        self.membership = self._base_membership
        self._scan_config(self.log.first_index)

        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()

        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.transfer_target: str | None = None
        self.transfer_elapsed = 0
        self._timeout_now_sent = False

        self._read_seq = 0
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_commit: list[Hashable] = []
        self._ready_reads: list[ReadState] = []
        self._dropped_reads: list[Hashable] = []

        self._msgs: list[Outbound] = []
        self._pending_snapshot: SnapshotToInstall | None = None
        self._need_broadcast_append = False
        self._need_broadcast_commit = False
        self._need_broadcast_heartbeat = False

        #: Readys handed out by ready() and taken back by advance(), numbered from 1:
        #: invariant advanced <= handed (a Ready is advanced once, in the order handed out)
        self._readys_handed = 0
        self._readys_advanced = 0

        self._prev_hard = HardState(self.term, self.vote, self.log.committed)
        self._prev_soft = SoftState(self.role, self.term, self.leader)
        self._prev_membership = self.membership
        self._refresh_follower_role()

    # ================================================================= inputs

    def tick(self, now_ms: int) -> None:
        """One logical tick. ``now_ms`` is this node's wall clock (it may jump; see _stamp)."""
        self.now_ms = now_ms
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        if msg.dst != self.id:
            return
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._on_lower_term(msg)
            return
        self._dispatch(msg)

    def propose(self, data: bytes, now_ms: int | None = None) -> int:
        """Append a command; returns its index. The caller learns the outcome when the entry at that
        index is applied: same term as returned by ``term`` now → this command, else it was lost."""
        self._check_can_propose()
        return self._append_own(EntryKind.NORMAL, data, now_ms)

    def propose_conf_change(self, cc: ConfChange, now_ms: int | None = None) -> int:
        self._check_can_propose()
        if self.log.term_at(self.log.committed) != self.term:
            raise ConfChangeInProgress(
                self.id, "the leader has not committed an entry of its term yet; retry"
            )
        latest = self._conf_history[-1][0] if self._conf_history else 0
        if latest > self.log.committed:
            raise ConfChangeInProgress(self.id, f"the change at index {latest} is not committed yet; retry")
        self._validate_conf_change(cc)
        return self._append_own(EntryKind.CONFIG, cc.encode(self.membership.apply(cc)), now_ms)

    def read_index(self, ctx: Hashable) -> None:
        """Start a linearizable read; ``ReadState(ctx, index)`` appears in a later Ready (§6.4)."""
        if self.role != Role.LEADER:
            raise NotLeader(self.id, self.leader)
        if not self._committed_own_term():
            self._reads_awaiting_commit.append(ctx)
            return
        self._register_read(ctx)

    def transfer_leadership(self, target: str) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.id, self.leader)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise ValueError(
                f"cannot transfer leadership to {target}: not a voter of {sorted(self.membership.voters)}"
            )
        self.transfer_target = target
        self.transfer_elapsed = 0
        self._timeout_now_sent = False
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def campaign(self) -> None:
        """Start an election now (skipping PreVote), if this node may vote."""
        if self._promotable() and self.role != Role.LEADER:
            self._become_candidate(transfer=False)

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """Metadata for a state-machine snapshot covering everything up to applied ``index``."""
        assert self.log.snapshot_index <= index <= self.log.applied, (index, self.log.applied)
        if index == self.log.snapshot_index:
            return SnapshotMeta(
                index, self.log.snapshot_term, self._membership_at(index), self.log.snapshot_time_ms
            )
        e = self.log.entry(index)
        return SnapshotMeta(index, e.term, self._membership_at(index), e.time_ms)

    def compact(self, index: int) -> None:
        """The driver durably stored a snapshot at ``index``: forget the log up to it."""
        if index <= self.log.snapshot_index:
            return
        self._base_membership = self._membership_at(index)
        self._conf_history = [(i, m) for i, m in self._conf_history if i > index]
        self.log.compact(index)

    def persisted(self, index: int, term: int) -> None:
        """Entries up to ``index`` (whose entry has ``term``) are durable on this node."""
        if index > self.log.persisted_index and self.log.term_at(index) == term:
            self.log.persisted_index = index
            if self.role == Role.LEADER:
                self._maybe_commit()

    # ================================================================= outputs

    def has_ready(self) -> bool:
        # The driver asks after every input: compare fields, not freshly built state objects.
        if (
            self._msgs
            or self._need_broadcast_append
            or self._need_broadcast_commit
            or self._need_broadcast_heartbeat
            or self.log.handed_index < self.log.last_index
            or self.log.applied < self.log.committed
            or self._pending_snapshot
            or self._ready_reads
            or self._dropped_reads
        ):
            return True
        hs, prev = self._hard_state(), self._prev_hard
        # a commit change alone does not make a Ready (the commit index is persisted lazily)
        return (
            hs.term != prev.term
            or hs.vote != prev.vote
            or self._soft_changed()
            or self.membership != self._prev_membership
        )

    def _soft_changed(self) -> bool:
        s = self._prev_soft
        return self.role != s.role or self.term != s.term or self.leader != s.leader

    def ready(self) -> Ready:
        self._flush_broadcasts()
        prev_hard, hs = self._prev_hard, self._hard_state()
        changed_hs = hs.term != prev_hard.term or hs.vote != prev_hard.vote
        self._prev_hard = hs
        changed_soft = self._soft_changed()
        if changed_soft:
            self._prev_soft = self._soft_state()
        changed_membership = self.membership != self._prev_membership
        self._prev_membership = self.membership
        applied_before = self.log.applied
        self._readys_handed += 1
        rd = Ready(
            hard_state=hs if changed_hs else None,
            entries=self.log.unstable(),
            snapshot=self._pending_snapshot,
            messages=tuple(self._msgs),
            committed=self.log.to_apply(),
            # Every released read has index <= committed, and everything up to committed is
            # applied once rd.committed is: so the driver may answer them right after applying.
            reads=tuple(self._ready_reads),
            soft_state=self._prev_soft if changed_soft else None,
            dropped_reads=tuple(self._dropped_reads),
            membership=self.membership if changed_membership else None,
            number=self._readys_handed,
        )
        self._pending_snapshot = None
        self._msgs, self._ready_reads, self._dropped_reads = [], [], []
        self._check_ready_made(rd, prev_hard, applied_before)
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd`` (and every Ready handed out before it)."""
        self._check_ready_returned(rd)
        self._readys_advanced = rd.number
        if rd.snapshot is not None:
            self.persisted(rd.snapshot.meta.index, rd.snapshot.meta.term)
        if rd.entries:
            last = rd.entries[-1]
            self.persisted(last.index, last.term)

    # ================================================================= status

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.term, self.leader)

    # ================================================================= Ready invariants

    def _check_log_indexes(self) -> None:
        log = self.log
        last = log.last_index
        assert log.snapshot_index <= log.applied <= log.committed <= last and log.persisted_index <= last, (
            f"{self.id}: snapshot_index {log.snapshot_index} <= applied {log.applied} <= "
            f"committed {log.committed} <= last_index {last} >= persisted {log.persisted_index} must hold"
        )

    def _check_ready_made(self, rd: Ready, prev_hard: HardState, applied_before: int) -> None:
        """A Ready the core just made, against the state it was made from."""
        _check_ready_shape(rd)
        log = self.log
        self._check_log_indexes()
        assert log.handed_index == log.last_index, (
            f"after ready() every entry is handed out to persist: handed {log.handed_index}, "
            f"last {log.last_index}"
        )
        if rd.entries:
            first = rd.entries[0]
            before = log.term_at(first.index - 1)
            assert first.index > log.snapshot_index and before is not None and before <= first.term, (
                f"entries to persist continue the log after the snapshot ({log.snapshot_index}) with "
                f"terms that never decrease: entry {first.index} of term {first.term} after term {before}"
            )
        if rd.committed:
            assert rd.committed[0].index == applied_before + 1 and rd.committed[-1].index == log.committed, (
                f"committed entries run from applied + 1 ({applied_before + 1}) to the commit index "
                f"({log.committed}); got {rd.committed[0].index}..{rd.committed[-1].index}"
            )
        hs = rd.hard_state
        if hs is not None:
            assert hs.term > prev_hard.term or (
                hs.term == prev_hard.term and prev_hard.vote in (None, hs.vote)
            ), (
                f"the term never goes down and a vote never changes within its term (§3.4): hard state "
                f"term {prev_hard.term} vote {prev_hard.vote} -> term {hs.term} vote {hs.vote}"
            )
            assert hs.commit <= log.last_index, (
                f"the commit index written to disk ({hs.commit}) lies within the log written before "
                f"or with it (last index {log.last_index})"
            )
        if rd.snapshot is not None:
            assert rd.snapshot.meta.index <= log.committed, (
                f"a snapshot to install holds committed entries only: index {rd.snapshot.meta.index}, "
                f"commit index {log.committed}"
            )
        for rs in rd.reads:
            assert rs.index <= log.committed, (
                f"a read is released at an index already committed (§6.4): {rs.index} > {log.committed}"
            )
        for out in rd.messages:
            assert out.msg.src == self.id, f"{self.id} sends only its own messages, not {out.msg}"

    def _check_ready_returned(self, rd: Ready) -> None:
        """A Ready handed back to ``advance``: one of ours, in order, and consistent with what the
        core handed out since (the same rules, from the other side)."""
        assert self._readys_advanced < rd.number <= self._readys_handed, (
            f"{self.id}: each Ready is advanced once, in the order handed out: got #{rd.number} after "
            f"#{self._readys_advanced} (last handed out: #{self._readys_handed})"
        )
        _check_ready_shape(rd)
        if rd.committed:
            assert rd.committed[-1].index <= self.log.applied, (
                f"advance() acknowledges only entries handed out to apply: {rd.committed[-1].index} > "
                f"applied {self.log.applied}"
            )
        if rd.hard_state is not None:
            assert rd.hard_state.term <= self.term, (
                f"a persisted term is one the core had: {rd.hard_state.term} > {self.term}"
            )
        if rd.snapshot is not None:
            assert rd.snapshot.meta.index <= self.log.committed, (
                f"an installed snapshot holds committed entries only: index {rd.snapshot.meta.index}, "
                f"commit index {self.log.committed}"
            )
        self._check_log_indexes()

    # ================================================================= role changes

    def _check_entered_from(self, to: Role) -> None:
        legal, why = _ENTERED_FROM[to]
        assert self.role in legal, (
            f"illegal role change {self.role} -> {to} on {self.id} in term {self.term}: {why}"
        )

    def _check_role(self) -> None:
        """The term/vote/leader invariants of the role just entered."""
        role, me = self.role, self.id
        if role in (Role.FOLLOWER, Role.LEARNER):
            assert self.leader != me and not self.progress and not self.votes, (
                f"a {role} never names itself leader and keeps no votes or progress ({me}, term {self.term})"
            )
            return
        assert me in self.membership.voters, f"only a voter campaigns or leads: {me} is {role}"
        if role == Role.LEADER:
            assert self.leader == me and self.vote == me, (
                f"a leader leads the term it won with its own vote: {me} in term {self.term} "
                f"has leader {self.leader}, vote {self.vote}"
            )
            assert set(self.progress) == self.membership.members - {me}, (
                f"a leader tracks every other member: {sorted(self.progress)} "
                f"vs {sorted(self.membership.members)}"
            )
            return
        assert self.leader is None and self.votes.get(me) is True, (
            f"a {role} knows no leader and counts its own vote ({me}, term {self.term})"
        )
        if role == Role.CANDIDATE:
            assert self.vote == me, (
                f"a candidate votes for itself: {me} voted {self.vote} in term {self.term}"
            )

    def _become_follower(self, term: int, leader: str | None, *, reset_timer: bool = True) -> None:
        self._check_entered_from(Role.FOLLOWER)
        assert term >= self.term, f"terms never go down (§3.3): {self.id} in term {self.term} told {term}"
        assert term > self.term or leader is None or self.leader in (None, leader), (
            f"at most one leader per term (Election Safety, §3.6.3): {self.id} follows {leader} in "
            f"term {term}, which already had leader {self.leader}"
        )
        was_leader = self.role == Role.LEADER
        if term > self.term:
            self.term = term
            self.vote = None
        self.leader = leader
        self.role = Role.FOLLOWER
        self._refresh_follower_role()
        if reset_timer:
            self.election_elapsed = 0
            self._reset_randomized_timeout()
        self.votes = {}
        self.progress = {}
        self.transfer_target = None
        if was_leader:
            self._drop_reads()
        self._check_role()

    def _become_pre_candidate(self) -> None:
        # PreVote (§9.6): ask whether we *could* win at term+1 without disturbing anyone's term.
        self._check_entered_from(Role.PRE_CANDIDATE)
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._reset_randomized_timeout()
        self._check_role()
        if self._tally() == "won":
            self._become_candidate(transfer=False)
            return
        for peer in sorted(self.membership.voters - {self.id}):
            self._send(
                RequestVote(
                    self.term + 1, self.id, peer, self.log.last_index, self.log.last_term, pre_vote=True
                ),
                after_persist=True,
            )

    def _become_candidate(self, *, transfer: bool) -> None:
        self._check_entered_from(Role.CANDIDATE)
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._reset_randomized_timeout()
        self._check_role()
        if self._tally() == "won":
            self._become_leader()
            return
        for peer in sorted(self.membership.voters - {self.id}):
            self._send(
                RequestVote(
                    self.term, self.id, peer, self.log.last_index, self.log.last_term, transfer=transfer
                ),
                after_persist=True,
            )

    def _become_leader(self) -> None:
        self._check_entered_from(Role.LEADER)
        assert self._tally() == "won", (
            f"a leader holds a quorum of its term's votes (§3.4): {self.id} in term {self.term} "
            f"has {self.votes}"
        )
        self.role = Role.LEADER
        self.leader = self.id
        self.votes = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.transfer_target = None
        self._read_seq = 0
        self.progress = {}
        for peer in self.membership.members - {self.id}:
            self.progress[peer] = Progress(match=0, next=self.log.last_index + 1, recent_active=True)
        # §8: a no-op of the new term, so that the leader learns its commit index quickly and
        # ReadIndex/conf changes may start once it commits.
        self._append_own(EntryKind.NOOP, b"", None)
        assert self.log.last_term == self.term, f"a new leader's log ends with its no-op (term {self.term})"
        self._check_role()

    def _refresh_follower_role(self) -> None:
        # The one role change outside _become_*: between follower and learner, with the membership.
        if self.role in (Role.FOLLOWER, Role.LEARNER):
            self.role = Role.FOLLOWER if self.id in self.membership.voters else Role.LEARNER

    def _reset_randomized_timeout(self) -> None:
        e = self.settings.election_ticks
        self.randomized_timeout = e + self.rng.randrange(0, e)

    def _promotable(self) -> bool:
        return self.id in self.membership.voters

    # ================================================================= ticks

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self._promotable():
            self.election_elapsed = 0
            if self.settings.pre_vote:
                self._become_pre_candidate()
            else:
                self._become_candidate(transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.heartbeat_elapsed >= self.settings.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._need_broadcast_heartbeat = True
        for pr in self.progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self.settings.election_ticks:
                    pr.become_probe()  # lost or failed install: try again
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.settings.election_ticks:
                self.transfer_target = None  # the target did not take over in time: keep leading
        if self.election_elapsed >= self.settings.election_ticks:
            self.election_elapsed = 0
            if self.settings.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            for pr in self.progress.values():
                pr.recent_active = False

    def _quorum_active(self) -> bool:
        active = sum(
            1
            for v in self.membership.voters
            if v == self.id or (v in self.progress and self.progress[v].recent_active)
        )
        return active >= self.membership.quorum()

    # ================================================================= message dispatch

    def _accept_higher_term(self, msg: Message) -> bool:
        """A message of a higher term. Returns False when it must be ignored."""
        if isinstance(msg, RequestVote):
            if self._in_leader_lease(msg):
                return False  # §9.6: we heard from a live leader recently; do not be disrupted
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
            self._become_follower(msg.term, None, reset_timer=self.role != Role.FOLLOWER)
            return True
        if isinstance(msg, RequestVoteResp) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes carry the term we asked for, not a newer one
        leader = msg.src if isinstance(msg, (AppendEntries, Heartbeat, InstallSnapshot)) else None
        self._become_follower(msg.term, leader)
        return True

    def _in_leader_lease(self, msg: RequestVote) -> bool:
        return (
            self.settings.check_quorum
            and not msg.transfer
            and self.leader is not None
            and msg.src != self.leader  # our own leader asking (it lost its quorum): listen to it
            and self.election_elapsed < self.settings.election_ticks
        )

    def _on_lower_term(self, msg: Message) -> None:
        if isinstance(msg, (AppendEntries, Heartbeat, InstallSnapshot)):
            # A stale leader: tell it our term so it steps down (needed with PreVote/CheckQuorum,
            # where it would otherwise never hear of the newer term).
            self._send(AppendEntriesResp(self.term, self.id, msg.src, False, 0), after_persist=True)
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResp(self.term, self.id, msg.src, False, pre_vote=True), after_persist=True)
        # other stale messages (old replies) are ignored

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, RequestVote):
            self._on_request_vote(msg)
        elif isinstance(msg, RequestVoteResp):
            self._on_vote_resp(msg)
        elif isinstance(msg, AppendEntries):
            self._on_append(msg)
        elif isinstance(msg, AppendEntriesResp):
            self._on_append_resp(msg)
        elif isinstance(msg, Heartbeat):
            self._on_heartbeat(msg)
        elif isinstance(msg, HeartbeatResp):
            self._on_heartbeat_resp(msg)
        elif isinstance(msg, InstallSnapshot):
            self._on_install_snapshot(msg)
        elif isinstance(msg, InstallSnapshotResp):
            self._on_install_snapshot_resp(msg)
        elif isinstance(msg, TimeoutNow):
            self._on_timeout_now(msg)

    # ----------------------------------------------------------------- votes

    def _on_request_vote(self, msg: RequestVote) -> None:
        grant = self._can_vote_for(msg) and self._log_ok_for_vote(msg)
        if grant and not msg.pre_vote:
            assert self.vote in (None, msg.src), (
                f"one vote per term (§3.4; a candidate or leader voted for itself): {self.id} "
                f"({self.role}) voted {self.vote} in term {self.term}, asked by {msg.src}"
            )
            self.vote = msg.src
            self.election_elapsed = 0  # granting a vote resets the timer (§3.4)
        term = msg.term if grant and msg.pre_vote else self.term
        self._send(RequestVoteResp(term, self.id, msg.src, grant, pre_vote=msg.pre_vote), after_persist=True)

    def _can_vote_for(self, msg: RequestVote) -> bool:
        if msg.pre_vote:
            # The leader-lease check already ran in _accept_higher_term; a pre-vote of our own
            # term is refused (that term has its candidate or leader already).
            return msg.term > self.term
        return self.vote == msg.src or (self.vote is None and self.leader is None)

    def _log_ok_for_vote(self, msg: RequestVote) -> bool:
        return self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)

    def _on_vote_resp(self, msg: RequestVoteResp) -> None:
        want = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role != want or msg.src not in self.membership.voters:
            return
        self.votes[msg.src] = msg.granted
        outcome = self._tally()
        if outcome == "won":
            if msg.pre_vote:
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
        elif outcome == "lost":
            self._become_follower(self.term, None)

    def _tally(self) -> str:
        q = self.membership.quorum()
        yes = sum(1 for v, g in self.votes.items() if g and v in self.membership.voters)
        no = sum(1 for v, g in self.votes.items() if not g and v in self.membership.voters)
        if yes >= q:
            return "won"
        if no >= q:
            return "lost"
        return "pending"

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if self._promotable() and self.role != Role.LEADER:
            self._become_candidate(transfer=True)

    # ----------------------------------------------------------------- follower side of replication

    def _on_append(self, msg: AppendEntries) -> None:
        self._follow(msg.src)
        first_changed = self.log.last_index + 1
        for e in msg.entries:
            if self.log.term_at(e.index) != e.term:
                first_changed = min(first_changed, e.index)
                break
        match = self._merge_entries(msg)
        if match is None:
            hint_index, hint_term = self._reject_hint(msg.prev_index)
            self._send(
                AppendEntriesResp(self.term, self.id, msg.src, False, msg.prev_index, hint_index, hint_term),
                after_persist=True,
            )
            return
        if first_changed <= self.log.last_index or self._conf_history_beyond(self.log.last_index):
            self._scan_config(first_changed)
        self.log.commit_to(min(msg.commit, match, self.log.last_index))
        self._send(AppendEntriesResp(self.term, self.id, msg.src, True, match), after_persist=True)

    def _merge_entries(self, msg: AppendEntries) -> int | None:
        return self.log.maybe_append(msg.prev_index, msg.prev_term, msg.entries)

    def _reject_hint(self, prev_index: int) -> tuple[int, int]:
        if prev_index > self.log.last_index:
            return self.log.last_index + 1, 0
        term = self.log.term_at(prev_index) or 0
        return self.log.first_index_of_term_at(prev_index), term

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        self._follow(msg.src)
        # The leader sends min(our match, its commit), so this never names an entry we lack or
        # that differs from its log; clamp anyway — a commit beyond our log must never crash us.
        self.log.commit_to(min(msg.commit, self.log.last_index))
        # The leader sent commit <= the match we acknowledged. A log now shorter than that means
        # we lost acknowledged entries (a wiped or replaced disk): say where our log ends.
        lost = self.log.last_index + 1 if msg.commit > self.log.last_index else 0
        self._send(HeartbeatResp(self.term, self.id, msg.src, msg.seq, lost), after_persist=True)

    def _on_install_snapshot(self, msg: InstallSnapshot) -> None:
        self._follow(msg.src)
        meta = msg.meta
        if meta.index <= self.log.committed:
            index = self.log.committed  # we already have all of it
        elif self.log.term_at(meta.index) == meta.term:
            self.log.commit_to(meta.index)  # our log already holds the snapshot's last entry
            index = meta.index
        else:
            self.log.restore(meta)
            self._base_membership = meta.membership
            self._conf_history = []
            self.membership = meta.membership
            self._refresh_follower_role()
            self._pending_snapshot = SnapshotToInstall(meta, msg.data)
            index = meta.index
        self._send(InstallSnapshotResp(self.term, self.id, msg.src, index), after_persist=True)

    def _follow(self, leader: str) -> None:
        """A message from the leader of our term: follow it and reset the election timer."""
        if self.role not in (Role.FOLLOWER, Role.LEARNER) or self.leader != leader:
            self._become_follower(self.term, leader)
        self.election_elapsed = 0

    # ----------------------------------------------------------------- leader side of replication

    def _on_append_resp(self, msg: AppendEntriesResp) -> None:
        pr = self._leader_progress(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.success:
            if pr.update_match(msg.index):
                pr.match_round = self._read_seq
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                self._maybe_commit()
                if msg.src == self.transfer_target and pr.match == self.log.last_index:
                    self._send_timeout_now(msg.src)
            elif pr.state == ProgressState.PROBE:
                pr.become_replicate()
            # Only what is new: an empty append here would ping-pong forever on an idle cluster.
            self._send_append(msg.src, allow_empty=False)
            pr.check()
            return
        # Rejected. Stale if it answers an append we no longer care about.
        if msg.index <= pr.match or (pr.state == ProgressState.PROBE and msg.index != pr.next - 1):
            return
        # The entry at msg.index (the rejected prev_index) does not match: resume at or before it.
        pr.next = max(pr.match + 1, min(msg.index, self._next_from_hint(msg)))
        pr.state = ProgressState.PROBE
        pr.probe_sent = False
        pr.inflight.clear()
        self._send_append(msg.src)
        pr.check()

    def _next_from_hint(self, msg: AppendEntriesResp) -> int:
        if msg.hint_term == 0:
            return msg.hint_index  # follower's log ends before prev_index
        last = self.log.last_index_of_term(msg.hint_term)
        if last is not None:
            return last + 1  # we share that term: resume just after our last entry of it
        return msg.hint_index  # skip the follower's whole conflicting term

    def _on_heartbeat_resp(self, msg: HeartbeatResp) -> None:
        pr = self._leader_progress(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.lost_data_next_index and msg.seq > pr.match_round and msg.lost_data_next_index <= pr.match:
            # Only a follower that lost acknowledged entries says this (see _on_heartbeat), in reply
            # to a heartbeat sent after its match last moved (older reports, duplicated, are stale).
            # The one place a match goes down: it makes us resend and never uncommits anything.
            pr.match = msg.lost_data_next_index - 1
            pr.become_probe()
        if msg.seq > pr.acked_seq:
            pr.acked_seq = msg.seq
            self._release_reads()
        if pr.match < self.log.last_index:
            if pr.state == ProgressState.PROBE:
                pr.probe_sent = False  # the probe may have been lost: send again
            elif pr.state == ProgressState.REPLICATE and pr.match == pr.match_at_last_heartbeat:
                pr.become_probe()  # no progress for a heartbeat round: appends were lost
            self._send_append(msg.src)
        pr.match_at_last_heartbeat = pr.match
        pr.check()

    def _on_install_snapshot_resp(self, msg: InstallSnapshotResp) -> None:
        pr = self._leader_progress(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if pr.state == ProgressState.SNAPSHOT:
            if msg.index > pr.match:
                pr.match = msg.index
                pr.match_round = self._read_seq
            if msg.index > 0:
                pr.snapshot_index = max(pr.snapshot_index, msg.index)
            pr.become_probe()
        elif msg.index > pr.match:
            pr.update_match(msg.index)
            pr.match_round = self._read_seq
        self._maybe_commit()
        self._send_append(msg.src)
        pr.check()

    def _leader_progress(self, peer: str) -> Progress | None:
        if self.role != Role.LEADER:
            return None
        return self.progress.get(peer)

    def _send_append(self, peer: str, *, allow_empty: bool = True) -> None:
        """Send what ``peer`` lacks: one probe in PROBE, a pipeline of batches in REPLICATE, or the
        snapshot when the entries it needs were compacted away. ``allow_empty`` permits an
        entry-less append (a probe, or to carry a new commit index)."""
        pr = self.progress.get(peer)
        if pr is None:
            return
        sent = False
        while not pr.paused(self.settings.max_inflight_msgs):
            prev = pr.next - 1
            prev_term = self.log.term_at(prev)
            if prev_term is None:
                self._send_snapshot(peer, pr)
                return
            entries = self._batch_from(pr.next)
            if not entries and (sent or not allow_empty):
                return
            self._send(
                AppendEntries(self.term, self.id, peer, prev, prev_term, tuple(entries), self.log.committed),
                after_persist=False,
            )
            sent = True
            if pr.state != ProgressState.REPLICATE:
                pr.probe_sent = True
                return
            if not entries:
                return
            pr.next = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)

    def _batch_from(self, lo: int) -> list[Entry]:
        last = self.log.last_index
        if lo > last:
            return []
        hi = min(last, lo + self.settings.max_entries_per_msg - 1)
        out: list[Entry] = []
        size = 0
        for e in self.log.slice(lo, hi):
            if out and size + len(e.data) > self.settings.max_bytes_per_msg:
                break
            out.append(e)
            size += len(e.data)
        return out

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        meta = self.snapshot_meta(self.log.snapshot_index)
        pr.become_snapshot(meta.index)
        self._send(InstallSnapshot(self.term, self.id, peer, meta), after_persist=False)

    def _send_heartbeat(self, peer: str) -> None:
        pr = self.progress[peer]
        commit = min(pr.match, self.log.committed)
        self._send(Heartbeat(self.term, self.id, peer, commit, self._read_seq), after_persist=False)

    def _send_timeout_now(self, peer: str) -> None:
        if not self._timeout_now_sent:
            self._timeout_now_sent = True
            self._send(TimeoutNow(self.term, self.id, peer), after_persist=False)

    def _flush_broadcasts(self) -> None:
        if self.role != Role.LEADER:
            self._need_broadcast_append = self._need_broadcast_heartbeat = False
            self._need_broadcast_commit = False
            return
        if self._need_broadcast_heartbeat:
            self._need_broadcast_heartbeat = False
            # Every broadcast opens a new round: an ack of round r proves the follower heard us
            # after everything registered before round r was sent (reads wait for their round).
            self._read_seq += 1
            for peer in sorted(self.progress):
                self._send_heartbeat(peer)
        if self._need_broadcast_append or self._need_broadcast_commit:
            # A new commit index travels even without new entries (followers apply sooner).
            # Otherwise only a follower that lags gets an empty append (a probe), so idle
            # clusters stay quiet.
            allow_empty = self._need_broadcast_commit
            self._need_broadcast_append = self._need_broadcast_commit = False
            for peer in sorted(self.progress):
                self._send_append(peer, allow_empty=allow_empty)

    # ----------------------------------------------------------------- commit

    def _maybe_commit(self) -> None:
        """§3.6: commit the highest index a quorum of voters has durably stored — but only by counting
        an entry of the current term (Figure 8); earlier entries commit with it."""
        matches = sorted(
            (self.log.persisted_index if v == self.id else self.progress[v].match)
            for v in self.membership.voters
            if v == self.id or v in self.progress
        )
        if len(matches) < self.membership.quorum():
            return
        candidate = matches[len(matches) - self.membership.quorum()]
        if candidate > self.log.committed and self._may_commit_by_counting(candidate):
            self.log.commit_to(candidate)
            self._need_broadcast_commit = True
            self._on_commit_advanced()

    def _may_commit_by_counting(self, index: int) -> bool:
        return self.log.term_at(index) == self.term

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self._committed_own_term():
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx in waiting:
                self._register_read(ctx)
        latest = self._conf_history[-1][0] if self._conf_history else 0
        if self.id not in self.membership.voters and latest <= self.log.committed:
            # §4.2.2: a leader removed from the cluster steps down once its removal commits; hand
            # over to the most up-to-date voter so the cluster does not wait for a timeout.
            best = max(
                (p for p in self.progress if p in self.membership.voters),
                key=lambda p: (self.progress[p].match, p),
                default=None,
            )
            if best is not None:
                self._timeout_now_sent = False
                self._send_timeout_now(best)
            self._become_follower(self.term, None)

    def _committed_own_term(self) -> bool:
        return self.log.term_at(self.log.committed) == self.term

    # ----------------------------------------------------------------- proposals

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.id, self.leader)
        if self.transfer_target is not None:
            raise LeadershipTransferInProgress(self.id, self.transfer_target)

    def _append_own(self, kind: EntryKind, data: bytes, now_ms: int | None) -> int:
        index = self.log.last_index + 1
        self.log.append([Entry(index, self.term, self._stamp(now_ms), kind, data)])
        if kind == EntryKind.CONFIG:
            self._scan_config(index)
        self._need_broadcast_append = True
        return index

    def _stamp(self, now_ms: int | None) -> int:
        """Leader-assigned cluster time: our clock, but never below the last stamp in our log, so
        cluster time never goes backwards — not on a clock jump, not across leader changes."""
        now = self.now_ms if now_ms is None else now_ms
        return max(now, self.log.last_time_ms)

    # ----------------------------------------------------------------- reads

    def _register_read(self, ctx: Hashable) -> None:
        if self.membership.voters == {self.id}:
            self._ready_reads.append(ReadState(ctx, self.log.committed))
            return
        # Every read registered before the next heartbeat broadcast shares its round (batching);
        # only acks of heartbeats sent *after* registration can confirm it.
        self._pending_reads.append(_PendingRead(ctx, self.log.committed, self._read_seq + 1))
        self._need_broadcast_heartbeat = True

    def _release_reads(self) -> None:
        while self._pending_reads:
            r = self._pending_reads[0]
            acks = sum(
                1
                for v in self.membership.voters
                if v == self.id or (v in self.progress and self.progress[v].acked_seq >= r.seq)
            )
            if acks < self.membership.quorum():
                return
            self._pending_reads.pop(0)
            self._ready_reads.append(ReadState(r.ctx, r.index))

    def _drop_reads(self) -> None:
        self._dropped_reads.extend(r.ctx for r in self._pending_reads)
        self._dropped_reads.extend(self._reads_awaiting_commit)
        self._pending_reads = []
        self._reads_awaiting_commit = []

    # ----------------------------------------------------------------- membership

    def _validate_conf_change(self, cc: ConfChange) -> None:
        m = self.membership
        if cc.op == ConfChangeOp.ADD_LEARNER and cc.node_id in m.members:
            raise ConfChangeInProgress(self.id, f"{cc.node_id} is already a member")
        if cc.op == ConfChangeOp.PROMOTE and cc.node_id in m.voters:
            raise ConfChangeInProgress(self.id, f"{cc.node_id} is already a voter")
        if cc.op == ConfChangeOp.REMOVE:
            if cc.node_id not in m.members:
                raise ConfChangeInProgress(self.id, f"{cc.node_id} is not a member")
            if m.voters == {cc.node_id}:
                raise ConfChangeInProgress(self.id, f"removing {cc.node_id} would leave no voter")

    def _membership_at(self, index: int) -> Membership:
        m = self._base_membership
        for i, mm in self._conf_history:
            if i <= index:
                m = mm
        return m

    def _conf_history_beyond(self, index: int) -> bool:
        return bool(self._conf_history) and self._conf_history[-1][0] > index

    def _scan_config(self, from_index: int) -> None:
        """Recompute the membership after the log changed from ``from_index`` on (§4.1: the latest
        configuration in the log is in effect, committed or not; a truncated one is undone)."""
        self._conf_history = [(i, m) for i, m in self._conf_history if i < from_index]
        m = self._conf_history[-1][1] if self._conf_history else self._base_membership
        lo = max(from_index, self.log.first_index)
        if lo <= self.log.last_index:
            for e in self.log.slice(lo, self.log.last_index):
                if e.kind == EntryKind.CONFIG:
                    m = ConfChange.decode_with_result(e.data)[1]
                    self._conf_history.append((e.index, m))
        self._set_membership(m)

    def _set_membership(self, m: Membership) -> None:
        if m == self.membership:
            return
        self.membership = m
        self._refresh_follower_role()
        if self.role == Role.LEADER:
            for peer in m.members - {self.id}:
                if peer not in self.progress:
                    self.progress[peer] = Progress(match=0, next=self.log.last_index + 1, recent_active=True)
            for peer in set(self.progress) - m.members:
                del self.progress[peer]
            if self.transfer_target is not None and self.transfer_target not in m.voters:
                self.transfer_target = None

    # ----------------------------------------------------------------- plumbing

    def _send(self, msg: Message, *, after_persist: bool) -> None:
        self._msgs.append(Outbound(msg, after_persist))


def _check_ready_shape(rd: Ready) -> None:
    """What holds within one Ready on its own: the entries to persist, and those to apply, each run
    contiguously with terms and cluster times that never decrease (the order of every Raft log),
    and both start after the snapshot the Ready installs."""
    if len(rd.entries) > 1:  # (most Readys carry one entry or none: skip the loop's setup)
        _check_run(rd.entries, "to persist")
    if len(rd.committed) > 1:
        _check_run(rd.committed, "to apply")
    if rd.snapshot is not None:
        snap = rd.snapshot.meta.index
        assert not rd.entries or rd.entries[0].index > snap, (
            f"entries to persist start after the snapshot installed with them: "
            f"{rd.entries[0].index} <= {snap}"
        )
        assert not rd.committed or rd.committed[0].index > snap, (
            f"entries to apply start after the snapshot installed with them: "
            f"{rd.committed[0].index} <= {snap}"
        )


def _check_run(run: tuple[Entry, ...], what: str) -> None:
    for a, b in pairwise(run):
        assert b.index == a.index + 1 and b.term >= a.term and b.time_ms >= a.time_ms, (
            f"entries {what} run contiguously with non-decreasing term and time: "
            f"{a.index}/t{a.term}/{a.time_ms}ms then {b.index}/t{b.term}/{b.time_ms}ms"
        )
