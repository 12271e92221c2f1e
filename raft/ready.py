"""The batch the core hands its driver, and the state it is restarted from.

Driver contract for one :class:`Ready` (the order matters; see ``RaftNode.ready``):

1. **Persist**: if ``snapshot`` is set, store it (and install it into the state machine);
   write ``entries`` — the first may have an index at or below entries persisted earlier, which
   means *truncate the stored log from that index, then append*; write ``hard_state`` if set;
   fsync everything (one fsync may cover the whole batch: group commit).
2. **Send** ``messages``. An :class:`Outbound` with ``after_persist=False`` may be sent before step 1
   finishes (what a leader sends its followers: appends, heartbeats, snapshots, TimeoutNow); every
   other one only after the fsync.
   An ``InstallSnapshot`` leaves the core with empty ``data``: the driver fills in the snapshot bytes.
3. **Apply** ``committed`` entries in order, then answer ``reads`` (each is safe once everything
   in ``committed`` is applied).
4. Call ``RaftNode.advance(ready)``: each Ready once, in the order taken (the core asserts it).

A driver may take the next Ready before it has finished with this one (so that a leader's
heartbeats leave while an fsync is in flight), provided it sends the early messages at once and
handles every other step of the batches strictly in the order it took them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum

from raftstate.raft.messages import Entry, HardState, Membership, Message, SnapshotMeta


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  #: a follower that is not a voter in its latest membership


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (logged by the node on every change)."""

    role: Role
    term: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class Outbound:
    msg: Message
    #: the message may only leave once this Ready's persist step is synced
    after_persist: bool


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read: safe to serve once the state machine has applied ``index``."""

    ctx: Hashable
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotToInstall:
    meta: SnapshotMeta
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver (the contract above). Immutable once handed out: the
    driver persists and applies exactly what the core checked, then hands it back to ``advance``
    (a driver that sends some messages early keeps the rest in a copy made with
    ``dataclasses.replace``; the copy keeps the ``number``). The invariants noted on the fields are
    asserted by RaftNode when it makes the Ready and again when ``advance`` takes it back."""

    #: set when term or vote changed: the term never decreases, a vote never changes within its
    #: term, and commit <= the last index handed out to persist (this batch or an earlier one)
    hard_state: HardState | None = None
    #: to persist: contiguous, term and time_ms non-decreasing, continuing the log after the snapshot
    entries: tuple[Entry, ...] = ()
    #: meta.index <= the commit index; ``entries`` and ``committed`` start after it
    snapshot: SnapshotToInstall | None = None
    #: every one from this node
    messages: tuple[Outbound, ...] = ()
    #: to apply, in order: contiguous, from applied + 1 (the last Ready's end) to the commit index
    committed: tuple[Entry, ...] = ()
    #: each at an index <= the commit index, so safe once ``committed`` is applied
    reads: tuple[ReadState, ...] = ()
    #: set when role, term or leader changed since the previous Ready
    soft_state: SoftState | None = None
    #: reads refused since the previous Ready because leadership was lost (ctx values)
    dropped_reads: tuple[Hashable, ...] = ()
    #: the latest membership (effective as soon as its entry is appended), when it changed
    membership: Membership | None = None
    #: 1, 2, ... in the order the core handed Readys out; ``advance`` takes them back in that order
    number: int = 0


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a restarting node loads from disk to rebuild the core."""

    hard_state: HardState = HardState()
    #: the latest snapshot's metadata; None for a fresh node
    snapshot: SnapshotMeta | None = None
    #: every stored entry after the snapshot, contiguous
    entries: tuple[Entry, ...] = ()
