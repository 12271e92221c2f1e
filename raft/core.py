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

Role changes happen only in the ``_become_*`` methods. Small methods are deliberate override
points: the simulator's mutation tests subclass RaftNode to break one rule at a time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
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
        return bool(
            self._msgs
            or self._need_broadcast_append
            or self._need_broadcast_commit
            or self._need_broadcast_heartbeat
            or self.log.handed_index < self.log.last_index
            or self.log.applied < self.log.committed
            or self._pending_snapshot
            or self._ready_reads
            or self._dropped_reads
            or self._hard_state() != self._prev_hard_core()
            or self._soft_state() != self._prev_soft
            or self.membership != self._prev_membership
        )

    def ready(self) -> Ready:
        self._flush_broadcasts()
        hs = self._hard_state()
        changed_hs = hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote
        self._prev_hard = hs
        soft = self._soft_state()
        changed_soft = soft != self._prev_soft
        self._prev_soft = soft
        changed_membership = self.membership != self._prev_membership
        self._prev_membership = self.membership
        rd = Ready(
            hard_state=hs if changed_hs else None,
            entries=self.log.unstable(),
            snapshot=self._pending_snapshot,
            messages=tuple(self._msgs),
            committed=self.log.to_apply(),
            # Every released read has index <= committed, and everything up to committed is
            # applied once rd.committed is: so the driver may answer them right after applying.
            reads=tuple(self._ready_reads),
            soft_state=soft if changed_soft else None,
            dropped_reads=tuple(self._dropped_reads),
            membership=self.membership if changed_membership else None,
        )
        self._pending_snapshot = None
        self._msgs, self._ready_reads, self._dropped_reads = [], [], []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
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

    def _prev_hard_core(self) -> HardState:
        # commit changes alone do not make a Ready (it is persisted lazily)
        return HardState(self._prev_hard.term, self._prev_hard.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.term, self.leader)

    # ================================================================= role changes

    def _become_follower(self, term: int, leader: str | None, *, reset_timer: bool = True) -> None:
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

    def _become_pre_candidate(self) -> None:
        # PreVote (§9.6): ask whether we *could* win at term+1 without disturbing anyone's term.
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._reset_randomized_timeout()
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
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._reset_randomized_timeout()
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

    def _refresh_follower_role(self) -> None:
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
