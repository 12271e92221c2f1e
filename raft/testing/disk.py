"""One node's disk in memory: what it has persisted *and synced*, and the writes still in flight.

Who uses it: the seeded simulator (node/sim: each SimNode's disk, crashes with unsynced and torn
writes) and tests/raftnet.py (each Peer's disk, for the rule-by-rule unit tests). Both reach it
through :class:`~raftstate.raft.testing.driver.ReadyDriver`, which turns each Ready into a
:class:`WriteBatch`; the batch reaches the disk only when its fsync completes (:meth:`MemDisk.sync`).
A crash before that loses it — or, when a run models torn writes, keeps a prefix of the batches
being written (:func:`torn_prefix`: snapshot, then entries, then hard state: the order of the Ready
contract, as a log-structured store would leave it).

Snapshots are written atomically (write + rename), outside the batches; the last few are kept by
index so that an InstallSnapshot the core emitted just before a newer local snapshot can still be
filled in with the bytes its metadata describes.

This is the twin of the core's side of the persist step: it checks what the Ready contract allows
(raft/ready.py) and raises :class:`DiskContractError` otherwise. It is *not* the node's
``MemoryStorage`` (node/storage/store.py): that one is the in-memory twin of ``DiskStorage`` behind
the node's ``Storage`` protocol (thread-safe, ``LoadedState``, DiskStorage's own validation rules,
used by node tests and tests/driverfarm.py to drive the real node driver), and it ships with the
node, which may not import a test kit. The two share the core's persist semantics, not an API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from raftstate.raft import Entry, HardState, PersistedState, Ready, SnapshotMeta


class DiskContractError(Exception):
    """The core asked the driver for something the Ready contract does not allow.

    ``rule`` names the broken rule (the simulator reports it as the failed invariant)."""

    def __init__(self, detail: str, *, rule: str = "persist_contract") -> None:
        self.rule = rule
        super().__init__(detail)


@dataclass(slots=True)
class WriteBatch:
    """The persist step of one Ready, as handed to the disk."""

    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: Sequence[Entry] = field(default_factory=list)
    hard_state: HardState | None = None

    @classmethod
    def of(cls, rd: Ready) -> WriteBatch:
        snap = (rd.snapshot.meta, rd.snapshot.data) if rd.snapshot is not None else None
        return cls(snap, rd.entries, rd.hard_state)

    def empty(self) -> bool:
        return self.snapshot is None and not self.entries and self.hard_state is None

    def torn(self, keep: int) -> WriteBatch:
        """The first ``keep`` operations of this batch (snapshot, each entry, hard state)."""
        out = WriteBatch()
        if self.snapshot is not None:
            if keep <= 0:
                return out
            out.snapshot = self.snapshot
            keep -= 1
        out.entries = self.entries[: max(0, keep)]
        if keep > len(self.entries) and self.hard_state is not None:
            out.hard_state = self.hard_state
        return out

    def ops(self) -> int:
        return (self.snapshot is not None) + len(self.entries) + (self.hard_state is not None)


def torn_prefix(batches: Iterable[WriteBatch], keep: int) -> list[WriteBatch]:
    """What survives of ``batches`` (written in this order, none synced) when a crash keeps only
    their first ``keep`` operations."""
    out = []
    for b in batches:
        if keep <= 0:
            break
        out.append(b.torn(keep))
        keep -= b.ops()
    return out


@dataclass(slots=True)
class MemDisk:
    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    #: every entry after the snapshot, contiguous
    entries: list[Entry] = field(default_factory=list)
    #: snapshot index -> (meta, bytes); the latest few
    snapshots: dict[int, tuple[SnapshotMeta, bytes]] = field(default_factory=dict)
    #: batches synced so far
    syncs: int = 0

    KEEP_SNAPSHOTS = 3

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def persisted_state(self) -> PersistedState:
        """What a restarting core is rebuilt from."""
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))

    def snapshot_data(self, index: int) -> bytes | None:
        got = self.snapshots.get(index)
        return got[1] if got else None

    def latest_snapshot_data(self) -> bytes | None:
        return self.snapshot_data(self.snapshot_index) if self.snapshot else None

    def holds(self, index: int, term: int) -> bool:
        """Whether this disk durably holds the entry (index, term), directly or inside a snapshot."""
        if self.snapshot is not None and index <= self.snapshot.index:
            return True  # a snapshot only ever covers committed entries
        k = index - self.snapshot_index - 1
        return 0 <= k < len(self.entries) and self.entries[k].term == term

    # ----------------------------------------------------------------- writes

    def store_snapshot(self, meta: SnapshotMeta, data: bytes, *, drop_log: bool) -> None:
        """Atomically replace the snapshot. ``drop_log``: an installed snapshot replaces the whole log
        (the core restarts its log from it); a local one only trims the entries it covers."""
        if self.snapshot is not None and meta.index < self.snapshot.index:
            raise DiskContractError(
                f"snapshot at {meta.index} would replace a newer one at {self.snapshot.index}"
            )
        self.snapshot = meta
        self.snapshots[meta.index] = (meta, data)
        while len(self.snapshots) > self.KEEP_SNAPSHOTS:
            del self.snapshots[min(self.snapshots)]
        if drop_log:
            self.entries = []
        else:
            self.entries = [e for e in self.entries if e.index > meta.index]

    def sync(self, batch: WriteBatch) -> None:
        """The batch's fsync completed: it is durable now (in the order snapshot, entries, hard state)."""
        if batch.snapshot is not None:
            meta, data = batch.snapshot
            self.store_snapshot(meta, data, drop_log=True)
        if batch.entries:
            first = batch.entries[0].index
            if first <= self.snapshot_index:
                raise DiskContractError(
                    f"entries from {first} handed to persist, but the snapshot already covers "
                    f"{self.snapshot_index}"
                )
            if first > self.last_index + 1:
                raise DiskContractError(f"entries from {first} leave a gap after stored {self.last_index}")
            # "truncate the stored log from that index, then append"
            del self.entries[first - self.snapshot_index - 1 :]
            self.entries.extend(batch.entries)
        if batch.hard_state is not None:
            self.hard_state = batch.hard_state
        self.syncs += 1
