"""Errors of a node's durable storage (log, hard state, snapshots, data dir).

    StorageError            a LocalFault (raftstate.node.errors draws the whole tree of a node)
    ├── StorageCorruption   what is on disk failed validation (CRC, length, contiguity, format):
    │                       a fault from the past; the node must not start on it — operator action
    ├── StorageIOError      the OS failed a read/write/fsync *now*; the on-disk state is uncertain,
    │                       so the storage refuses every later call: restart the process
    ├── DataDirLocked       another process (or another open in this one) holds <data_dir>/LOCK
    └── DataDirMismatch     the data dir belongs to a different node id or cluster id

Misuse by the caller (a non-contiguous append, a snapshot older than the current one) is a bug in
the driver or the core, not a storage fault: it raises ``ValueError`` and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from raftstate.node.errors import LocalFault

__all__ = [
    "RECOVERY_ADVICE",
    "DataDirLocked",
    "DataDirMismatch",
    "StorageCorruption",
    "StorageError",
    "StorageIOError",
]

#: What an operator should do about a corrupt data dir. Raft makes this safe: a node that lost its
#: state rejoins as an empty follower and receives a snapshot plus the log from the leader.
RECOVERY_ADVICE = (
    "Do not edit the files by hand. To recover this node: stop it, move its data dir aside (keep it "
    "for analysis), and restart it with an empty data dir under the same node id; it catches up from "
    "the leader by snapshot. If a majority of nodes report this, restore from a backup instead."
)


class StorageError(LocalFault):
    """Base of every error raised by raftstate.node storage."""


class StorageCorruption(StorageError):
    """On-disk data failed validation. Never recovered silently: serving it could break Raft safety."""

    def __init__(
        self,
        path: Path,
        reason: str,
        *,
        offset: int | None = None,
        index: int | None = None,
    ) -> None:
        self.path = path
        self.reason = reason
        self.offset = offset
        self.index = index
        where = str(path)
        if offset is not None:
            where += f" at byte offset {offset}"
        if index is not None:
            where += f" (entry index {index})"
        super().__init__(f"storage corruption in {where}: {reason}. {RECOVERY_ADVICE}")


class StorageIOError(StorageError):
    """An OS-level I/O failure. After a failed write or fsync the page cache may no longer match
    the disk (the "fsyncgate" lesson), so retrying is unsafe: the process must restart and recover."""


class DataDirLocked(StorageError):
    def __init__(self, root: Path, pid: int | None) -> None:
        self.root = root
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process (pid not yet recorded)"
        super().__init__(
            f"data dir {root} is in use by {holder} (lock file {root / 'LOCK'}); two processes must "
            f"never share a data dir: stop the other one, or give this node its own --data-dir"
        )


class DataDirMismatch(StorageError):
    def __init__(self, root: Path, what: str, stored: str | None, given: str | None) -> None:
        self.root = root
        self.what = what
        self.stored = stored
        self.given = given
        super().__init__(
            f"data dir {root} belongs to {what} {stored!r}, but this node was started as {what} "
            f"{given!r}; a data dir holds exactly one node's state: point this node at its own "
            f"data dir, or at an empty directory to join as a new node"
        )
