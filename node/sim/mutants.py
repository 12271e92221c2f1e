"""Deliberately broken cores: each subclass of RaftNode breaks exactly one rule by overriding one
small method (raft/core.py keeps those methods small on purpose). tests/test_simulator.py asserts
that the simulator catches every one of them within a bounded number of seeds — a simulator that
cannot fail proves nothing.

Each entry of :data:`MUTANTS` names the rule it breaks; :data:`HUNT` says which fault mix finds it
fastest and which invariants may report it.
"""

from __future__ import annotations

from collections.abc import Hashable

from raftstate.raft import (
    AppendEntriesResp,
    ConfChange,
    EntryKind,
    HardState,
    Message,
    RaftNode,
    ReadState,
    RequestVote,
    RequestVoteResp,
)


class CommitOldTermByCounting(RaftNode):
    """Figure 8: commits an entry of an earlier term as soon as a quorum stores it."""

    def _may_commit_by_counting(self, index: int) -> bool:
        return True


class ForgetVote(RaftNode):
    """The vote is never part of the persisted hard state: a restart forgets whom it voted for."""

    def _hard_state(self) -> HardState:
        return HardState(self.term, None, self.log.committed)


class VoteForStaleLog(RaftNode):
    """Grants (pre-)votes without the §5.4.1 up-to-date check."""

    def _log_ok_for_vote(self, msg: RequestVote) -> bool:
        return True


class ReadWithoutReadIndex(RaftNode):
    """Serves a read at its commit index at once, without confirming leadership with a quorum."""

    def _register_read(self, ctx: Hashable) -> None:
        self._ready_reads.append(ReadState(ctx, self.log.committed))


class ReadBeforeOwnTermCommit(RaftNode):
    """Takes ReadIndex reads before the new leader's no-op committed (its commit may be stale)."""

    def _committed_own_term(self) -> bool:
        return True


class AckBeforeFsync(RaftNode):
    """A follower acknowledges appended entries before they are durable."""

    def _send(self, msg: Message, *, after_persist: bool) -> None:
        if isinstance(msg, AppendEntriesResp):
            after_persist = False
        super()._send(msg, after_persist=after_persist)


class VoteBeforeFsync(RaftNode):
    """Grants a vote before the vote is durable."""

    def _send(self, msg: Message, *, after_persist: bool) -> None:
        if isinstance(msg, RequestVoteResp) and not msg.pre_vote:
            after_persist = False
        super()._send(msg, after_persist=after_persist)


class LeaderCountsUnsynced(RaftNode):
    """The leader counts its own entries toward a quorum before its own fsync completed."""

    def _maybe_commit(self) -> None:
        self.log.persisted_index = self.log.last_index
        super()._maybe_commit()


class NoCheckQuorum(RaftNode):
    """A leader never notices it lost its quorum: a partitioned-away leader leads on forever."""

    def _quorum_active(self) -> bool:
        return True


class MembershipFromDeltas(RaftNode):
    """Rebuilds the membership by applying each config entry's *change* to what it had, ignoring the
    result the entry carries: a joiner that started knowing nobody and replays the log never learns
    the initial voters, and after its promotion counts itself a quorum of one."""

    def _scan_config(self, from_index: int) -> None:
        self._conf_history = [(i, m) for i, m in self._conf_history if i < from_index]
        m = self._conf_history[-1][1] if self._conf_history else self._base_membership
        lo = max(from_index, self.log.first_index)
        if lo <= self.log.last_index:
            for e in self.log.slice(lo, self.log.last_index):
                if e.kind == EntryKind.CONFIG:
                    m = m.apply(ConfChange.decode(e.data))
                    self._conf_history.append((e.index, m))
        self._set_membership(m)


MUTANTS: dict[str, type[RaftNode]] = {
    "commit_old_term": CommitOldTermByCounting,
    "forget_vote": ForgetVote,
    "vote_stale_log": VoteForStaleLog,
    "read_without_readindex": ReadWithoutReadIndex,
    "read_before_noop": ReadBeforeOwnTermCommit,
    "ack_before_fsync": AckBeforeFsync,
    "vote_before_fsync": VoteBeforeFsync,
    "leader_counts_unsynced": LeaderCountsUnsynced,
    "membership_from_deltas": MembershipFromDeltas,
    "no_check_quorum": NoCheckQuorum,
}
