"""A simulated durable disk: what one node has persisted *and synced*.

A node's Ready becomes a :class:`WriteBatch`; the batch reaches the disk only when its simulated
fsync completes (:meth:`SimDisk.sync`). A crash before that loses it — or, when the run models torn
writes, keeps a prefix of it (snapshot, then entries, then hard state: the order of the Ready
contract, as a log-structured store would leave it).

Snapshots are written atomically (write + rename), outside the batches; the last few are kept by
index so that an InstallSnapshot the core emitted just before a newer local snapshot can still be
filled in with the bytes its metadata describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftstate.raft import Entry, HardState, PersistedState, SnapshotMeta


class DiskContractError(Exception):
    """The core asked the driver for something the Ready contract does not allow."""


@dataclass(slots=True)
class WriteBatch:
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None

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


@dataclass(slots=True)
class SimDisk:
    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    #: every entry after the snapshot, contiguous
    entries: list[Entry] = field(default_factory=list)
    #: snapshot index -> (meta, bytes); the latest few
    snapshots: dict[int, tuple[SnapshotMeta, bytes]] = field(default_factory=dict)
    syncs: int = 0

    KEEP_SNAPSHOTS = 3

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def persisted_state(self) -> PersistedState:
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
