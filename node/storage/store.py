"""A node's durable storage: the seam the node driver persists a Ready through.

    Storage (Protocol)
    ├── DiskStorage     the real one: data dir + segmented log + hard state file + snapshot files
    └── MemoryStorage   its in-memory twin for unit tests and simulators (durable by fiat)

Driver usage::

    storage = DiskStorage(data_dir, node_id="n1", on_fsync=histogram.observe)
    loaded = storage.load()                       # -> RaftNode(persisted=loaded.persisted, ...)
    ...
    await asyncio.to_thread(storage.save, ready.hard_state, ready.entries, ready.snapshot)

Contract of :meth:`Storage.save` (the persist step of raft/ready.py), applied in this order:
    1. ``snapshot``: stored durably, then the whole log is discarded — it restarts after the
       snapshot's index;
    2. ``entries``: the first may be at or below the last stored index: the log is truncated from
       there, then they are appended; all of them are made durable with one fsync (group commit);
    3. ``hard_state``: replaced atomically and durably.
Nothing of a Ready may be acknowledged (messages with ``after_persist``) before ``save`` returns.

What :meth:`Storage.load` returns satisfies the core's restart invariants: ``entries`` are
contiguous and start right after ``snapshot.index`` (or at 1), and never include an entry the
snapshot covers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from raftstate.node.storage.data_dir import DataDir, FsyncHook
from raftstate.node.storage.errors import StorageCorruption, StorageIOError
from raftstate.node.storage.hard_state import HardStateFile
from raftstate.node.storage.log_store import DEFAULT_SEGMENT_BYTES, SegmentedLog
from raftstate.node.storage.snapshot_store import SnapshotRef, SnapshotStore
from raftstate.raft.messages import Entry, HardState, SnapshotMeta
from raftstate.raft.ready import PersistedState, SnapshotToInstall

__all__ = ["DiskStorage", "LoadedState", "MemoryStorage", "Storage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedState:
    """What a (re)starting node rebuilds from: the core's state and the state machine's snapshot."""

    persisted: PersistedState
    #: the application's bytes of ``persisted.snapshot``; None exactly when there is no snapshot
    snapshot_data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        assert (self.persisted.snapshot is None) == (self.snapshot_data is None)


class Storage(Protocol):
    """Durable state of one node. Blocking, so the driver calls it from worker threads — and from
    more than one at once (``save`` for the log while a snapshot is written or read): every
    implementation serialises its own methods."""

    def load(self) -> LoadedState:
        """Recover and return everything stored. Must be called before any other method."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotToInstall | None,
    ) -> None:
        """Persist one Ready (order and semantics in the module docstring); durable on return."""
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot the local state machine took (``meta.index`` <= the last stored
        entry), then drop log entries it makes unnecessary. A snapshot not newer than the current
        one is ignored (a snapshot from the leader may have overtaken it)."""
        ...

    def snapshot_data(self) -> tuple[SnapshotMeta, bytes] | None:
        """The current snapshot with its bytes (to fill InstallSnapshot.data), or None."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- shared rules


def _check_contiguous(entries: Sequence[Entry]) -> None:
    for k, e in enumerate(entries):
        if e.index != entries[0].index + k:
            raise ValueError(f"entries are not contiguous: index {e.index} at position {k}")


def _check_install(meta: SnapshotMeta, current: SnapshotMeta | None) -> None:
    # The core installs only snapshots beyond its commit index, hence beyond any local snapshot.
    if current is not None and meta.index <= current.index:
        raise ValueError(f"snapshot to install at {meta.index} is not newer than the current {current.index}")


def _check_local_snapshot(
    meta: SnapshotMeta, current: SnapshotMeta | None, last_index: int, term_at: Callable[[int], int]
) -> bool:
    """Validate a local snapshot; False when it is not newer than the current one (nothing to do).

    Not newer is a legal race, not a bug: the driver writes local snapshots in the background, so a
    snapshot installed from the leader meanwhile may already have superseded it.
    """
    cur = current.index if current is not None else 0
    if meta.index <= cur:
        log.info("ignoring a local snapshot at %d: the current snapshot is at %d", meta.index, cur)
        return False
    if meta.index > last_index:
        raise ValueError(f"cannot snapshot at {meta.index}: the log is only stored up to {last_index}")
    # Checked now because at restart a term mismatch reads as "superseded log" and drops it.
    if term_at(meta.index) != meta.term:
        raise ValueError(f"snapshot at {meta.index} says term {meta.term}, the log {term_at(meta.index)}")
    return True


# --------------------------------------------------------------------------- in-memory twin


class MemoryStorage:
    """The in-memory twin of :class:`DiskStorage`: the same rules and errors, no files.

    Everything saved counts as durable, so a simulator "crashes" a node by dropping its core and
    rebuilding it from ``load()`` of the same instance (tests/driverfarm.py does, behind a view that
    loses unfinished saves). Used by node tests and tools that need the node's Storage protocol.
    The core's harnesses (node/sim, tests/raftnet.py) use the raft test kit's ``MemDisk`` instead:
    the twin of the core's persist step, with unsynced and torn writes, and no node dependency.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotToInstall | None = None
        #: entries after the snapshot, contiguous
        self.entries: list[Entry] = []
        self.closed = False
        self._mutex = threading.Lock()  # the driver calls from several worker threads

    @property
    def _snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    @property
    def last_index(self) -> int:
        return self._snapshot_index + len(self.entries)

    def load(self) -> LoadedState:
        with self._mutex:
            snap = self.snapshot
            persisted = PersistedState(self.hard_state, snap.meta if snap else None, tuple(self.entries))
            return LoadedState(persisted, snap.data if snap else None)

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotToInstall | None,
    ) -> None:
        with self._mutex:
            self._save(hard_state, entries, snapshot)

    def _save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotToInstall | None,
    ) -> None:
        assert not self.closed
        if entries:
            _check_contiguous(entries)
            after = snapshot.meta.index if snapshot is not None else self._snapshot_index
            last = after if snapshot is not None else self.last_index
            if not after < entries[0].index <= last + 1:
                raise ValueError(f"cannot append at {entries[0].index}: accepts {after + 1}..{last + 1}")
        if snapshot is not None:
            _check_install(snapshot.meta, self.snapshot.meta if self.snapshot else None)
            self.snapshot = snapshot
            self.entries = []
        if entries:
            del self.entries[entries[0].index - self._snapshot_index - 1 :]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        with self._mutex:
            self._save_snapshot(meta, data)

    def _save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        assert not self.closed
        current = self.snapshot.meta if self.snapshot else None
        term_at = lambda i: self.entries[i - self._snapshot_index - 1].term  # noqa: E731
        if _check_local_snapshot(meta, current, self.last_index, term_at):
            del self.entries[: meta.index - self._snapshot_index]
            self.snapshot = SnapshotToInstall(meta, data)

    def snapshot_data(self) -> tuple[SnapshotMeta, bytes] | None:
        with self._mutex:
            return (self.snapshot.meta, self.snapshot.data) if self.snapshot else None

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- on disk


class DiskStorage:
    """Storage in a data directory (layout in raftstate.node.storage.data_dir), locked while open.

    Thread-safety: every public method holds one mutex, so the driver may call ``save`` from a
    worker thread while another thread calls ``snapshot_data``. After any OS error the instance
    refuses further calls (StorageIOError): the process must restart and recover from disk.

    Log retention: a local snapshot compacts the log only up to the *older* of the two retained
    snapshots, so that should the newest snapshot ever fail validation, the older one plus the log
    still rebuild the same state (see :meth:`load`).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        node_id: str,
        cluster_id: str | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_fsync: FsyncHook = None,
        fsync_delay_s: float = 0.0,
    ) -> None:
        """Lock and check the data dir (DataDirLocked, DataDirMismatch); call :meth:`load` next.

        ``fsync_delay_s``: TEST-ONLY slow disk (node/test_hooks.py): every log fsync takes this
        many extra seconds, to show that a slow disk delays commits but never a leader's heartbeats.
        0.0, the default, in production."""
        assert fsync_delay_s >= 0, fsync_delay_s
        self._dir = DataDir.open(data_dir, node_id=node_id, cluster_id=cluster_id, on_fsync=on_fsync)
        self._segment_bytes = segment_bytes
        self._on_fsync = on_fsync
        self._hard = HardStateFile(self._dir.hard_state_path, on_fsync=on_fsync)
        self._snaps = SnapshotStore(self._dir.snapshot_dir, on_fsync=on_fsync)
        self._mutex = threading.Lock()
        self._log: SegmentedLog | None = None  # set by load()
        self._snapshot: SnapshotMeta | None = None  # the current snapshot (newest valid)
        self._hard_state: HardState | None = None  # the durable hard state, to skip rewriting it
        self._failed: OSError | None = None
        self.fsync_delay_s = fsync_delay_s  #: TEST-ONLY (see __init__); 0.0 in production

    @property
    def path(self) -> Path:
        return self._dir.root

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- Storage

    def load(self) -> LoadedState:
        """Recover from disk: newest valid snapshot, hard state, and the log entries after it.

        A corrupt newest snapshot is replaced by the previous one (with a warning, the bad file
        renamed ``.corrupt``) only if the log still holds every entry between the two; otherwise
        StorageCorruption. Log entries the snapshot covers are skipped; a log that contradicts the
        snapshot (an install interrupted by a crash before the log was discarded) is discarded.
        """
        with self._guard():
            if self._log is not None:
                self._log.close()
                self._log = None
            hard = self._hard.load()
            chosen, bad = self._pick_snapshot()
            meta = chosen[0] if chosen else None
            snap_index, snap_term = (meta.index, meta.term) if meta else (0, 0)
            log_, recovered = SegmentedLog.open(
                self._dir.log_dir,
                skip_through=snap_index,
                segment_bytes=self._segment_bytes,
                on_fsync=self._on_fsync,
            )
            self._log = log_
            if bad:
                _check_fallback(meta, bad, recovered)
            after = _entries_after_snapshot(recovered, snap_index, snap_term, self._dir.log_dir)
            if after is None or (not after and log_.next_index != snap_index + 1):
                log_.reset(snap_index + 1)
                after = []
            for ref, err in bad:
                dest = self._snaps.quarantine(ref)
                log.warning("%s; renamed it to %s and fell back to the snapshot at %d", err, dest, snap_index)
            self._snapshot = meta
            self._hard_state = hard
            persisted = PersistedState(hard or HardState(), meta, tuple(after))
            return LoadedState(persisted, chosen[1] if chosen else None)

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotToInstall | None,
    ) -> None:
        with self._guard():
            log_ = self._require_log()
            if entries:
                _check_contiguous(entries)
                floor = self._snapshot.index if self._snapshot is not None else 0
                if snapshot is None and entries[0].index <= floor:
                    raise ValueError(f"cannot append at {entries[0].index}: a snapshot covers up to {floor}")
            if snapshot is not None:
                _check_install(snapshot.meta, self._snapshot)
                if entries and entries[0].index != snapshot.meta.index + 1:
                    raise ValueError(
                        f"entries after a snapshot at {snapshot.meta.index} start at {entries[0].index}"
                    )
                # Snapshot durable first: a crash before the reset leaves snapshot + old log, which
                # load() resolves; the other order could lose entries nothing else holds.
                self._snaps.write(snapshot.meta, snapshot.data)
                self._snapshot = snapshot.meta
                log_.reset(snapshot.meta.index + 1)
            if entries:
                log_.append(entries)
                if self.fsync_delay_s:
                    time.sleep(self.fsync_delay_s)  # TEST-ONLY: a slow disk (node/test_hooks.py)
                log_.sync()
            if hard_state is not None and hard_state != self._hard_state:
                self._hard.save(hard_state)
                self._hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """The slow part — writing and fsyncing the file (~116 MB at 1M keys: seconds) — runs
        WITHOUT the mutex, so ``save`` (log appends, hence commits) goes on meanwhile; the mutex is
        held only to validate, and then to publish (rename), prune and compact. Safe because:
        the staged file has a name no other method reads or writes (tag ``local``; the driver
        writes one local snapshot at a time); the snapshot covers only committed entries, which
        ``save`` never truncates, and only this method compacts the log; and the log is compacted
        only after the snapshot is durable and named. Should a snapshot from the leader have been
        installed meanwhile, the staged one is re-validated under the mutex and dropped."""
        with self._guard():
            log_ = self._require_log()
            if not _check_local_snapshot(meta, self._snapshot, log_.last_index, lambda i: log_.entry(i).term):
                return
        try:
            staged = self._snaps.stage(meta, data, tag="local")
        except OSError as exc:
            with self._guard():
                self._failed = exc  # the same rule as every other write: the disk is now suspect
            raise StorageIOError(f"disk I/O failed writing a snapshot in {self._dir.root}: {exc}") from exc
        with self._guard():
            log_ = self._require_log()
            if not _check_local_snapshot(meta, self._snapshot, log_.last_index, lambda i: log_.entry(i).term):
                self._snaps.discard(staged)
                return
            self._snaps.publish(staged)
            self._snapshot = meta
            retained = self._snaps.list()
            log_.compact(retained[1].index if len(retained) > 1 else 0)

    def snapshot_data(self) -> tuple[SnapshotMeta, bytes] | None:
        """Read without the mutex (a named snapshot file is immutable), so a leader sending its
        snapshot does not stall its own log appends. Should pruning delete the file meanwhile
        (two newer snapshots taken), FileNotFoundError: the caller retries with the newer one."""
        with self._guard():
            if self._snapshot is None:
                return None
            ref = self._snaps.ref(self._snapshot.index, self._snapshot.term)
        return self._snaps.read(ref)

    def close(self) -> None:
        """Release files and the data dir lock (idempotent). Everything saved is already durable."""
        with self._mutex:
            if self._log is not None:
                self._log.close()
                self._log = None
            self._dir.close()

    # ----------------------------------------------------------------- internals

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._mutex:
            if self._dir.closed:
                raise RuntimeError(f"storage in {self._dir.root} is closed")
            if self._failed is not None:
                raise StorageIOError(
                    f"storage in {self._dir.root} failed earlier ({self._failed}); restart the process"
                ) from self._failed
            try:
                yield
            except OSError as exc:
                # After a failed write or fsync, memory and disk may disagree: stop using either.
                self._failed = exc
                raise StorageIOError(
                    f"disk I/O failed in {self._dir.root}: {exc}. The on-disk state is uncertain, so this "
                    f"storage refuses further calls: restart the process (recovery validates the data)"
                ) from exc

    def _require_log(self) -> SegmentedLog:
        if self._log is None:
            raise RuntimeError("call load() before save()")
        return self._log

    def _pick_snapshot(
        self,
    ) -> tuple[tuple[SnapshotMeta, bytes] | None, list[tuple[SnapshotRef, StorageCorruption]]]:
        """The newest snapshot that validates, and the newer ones that did not."""
        bad: list[tuple[SnapshotRef, StorageCorruption]] = []
        for ref in self._snaps.list():
            try:
                return self._snaps.read(ref), bad
            except StorageCorruption as err:
                bad.append((ref, err))
        return None, bad


def _check_fallback(
    meta: SnapshotMeta | None,
    bad: list[tuple[SnapshotRef, StorageCorruption]],
    recovered: list[Entry],
) -> None:
    """Falling back to an older snapshot is legal only if the log holds every entry from just after
    it up to the newest (corrupt) snapshot's index — the state the node had already applied."""
    newest = bad[0][0]
    index, term = (meta.index, meta.term) if meta else (0, 0)
    first = recovered[0].index if recovered else index + 1
    covered = (
        bool(recovered)
        and first <= index + 1
        and recovered[-1].index >= newest.index
        and (first > index or recovered[index - first].term == term)
    )
    if not covered:
        older = f"the previous snapshot (index {index})" if meta else "an empty state"
        raise StorageCorruption(
            newest.path,
            f"the newest snapshot is unusable ({bad[0][1].reason}), and {older} cannot replace it: the "
            f"log no longer holds entries {index + 1}..{newest.index}",
            index=newest.index,
        )


def _entries_after_snapshot(
    recovered: list[Entry], snap_index: int, snap_term: int, log_dir: Path
) -> list[Entry] | None:
    """The log entries after the snapshot, or None when the log must be discarded.

    Raft §7 / Figure 13: a log whose entry at the snapshot index has the snapshot's term continues
    the snapshot; any other log (different term there, or ending before it) predates a snapshot
    installed from the leader — its install was interrupted by a crash before the log was
    discarded — and is superseded. Discarding it is safe: the snapshot holds every committed entry
    up to its index, and no entry after a mismatch can have been committed. A log that starts
    *after* ``snap_index + 1`` has lost entries: StorageCorruption.
    """
    if not recovered:
        return []
    first, last = recovered[0].index, recovered[-1].index
    if first > snap_index + 1:
        raise StorageCorruption(
            log_dir,
            f"the log starts at index {first} but the snapshot covers only up to {snap_index}: "
            f"entries {snap_index + 1}..{first - 1} are missing",
            index=snap_index + 1,
        )
    if last < snap_index:
        log.warning(
            "%s: the log ends at %d, before the snapshot at %d: discarding it (a snapshot install "
            "was interrupted)",
            log_dir,
            last,
            snap_index,
        )
        return None
    if first <= snap_index and recovered[snap_index - first].term != snap_term:
        log.warning(
            "%s: log entry %d has term %d but the snapshot says %d: discarding the log (a snapshot "
            "install was interrupted)",
            log_dir,
            snap_index,
            recovered[snap_index - first].term,
            snap_term,
        )
        return None
    return recovered[snap_index - first + 1 :]
