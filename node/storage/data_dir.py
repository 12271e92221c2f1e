"""A node's data directory: its layout, its exclusive lock, and the durable-write primitives.

Layout::

    <data_dir>/
        LOCK          flock(LOCK_EX) held for the process lifetime; contains the holder's PID
        meta          JSON {"format", "node_id", "cluster_id"}, written at first start
        hard_state    term, vote, commit (raftstate.node.storage.hard_state)
        log/          log-<first index, 20 digits>.seg (raftstate.node.storage.log_store)
        snapshots/    snap-<index, 20 digits>-<term>.snap (raftstate.node.storage.snapshot_store)
        state/        state.db (+ -wal, -shm): the state store (raftstate.node.storage.state_file)

Durability rules every store follows (a rename or unlink is durable only once its *directory* is
fsynced; file contents only once the *file* is fsynced):
    - a new file is written under a temporary name, fsynced, renamed, then its directory fsynced;
    - every fsync goes through :func:`fsync_fd`/:func:`fsync_dir` so the node can time it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from raftstate.node.storage.errors import DataDirLocked, DataDirMismatch, StorageCorruption

__all__ = [
    "DataDir",
    "FsyncHook",
    "atomic_write",
    "fsync_dir",
    "fsync_fd",
    "publish",
    "remove_leftover_tmp",
    "write_all",
    "write_tmp",
]

#: Called with the duration in seconds of every fsync (file or directory), from the calling thread.
FsyncHook = Callable[[float], None] | None

_META_FORMAT = 1
_TMP_SUFFIX = ".tmp"


def fsync_fd(fd: int, on_fsync: FsyncHook, *, data_only: bool = False) -> None:
    """Flush ``fd`` to stable storage. ``data_only`` allows fdatasync (enough for appends: it still
    flushes the file size, which is the metadata needed to read the data back)."""
    start = time.perf_counter()
    full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
    if full_fsync is not None:
        # macOS: plain fsync() does not flush the drive's write cache.
        fcntl.fcntl(fd, full_fsync)
    elif data_only:
        os.fdatasync(fd)
    else:
        os.fsync(fd)
    if on_fsync is not None:
        on_fsync(time.perf_counter() - start)


def fsync_dir(path: Path, on_fsync: FsyncHook) -> None:
    """Make creations, renames and deletions of entries in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync_fd(fd, on_fsync)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write may write less than asked (signals, huge buffers); loop until all is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: Path, chunks: Iterable[bytes], on_fsync: FsyncHook) -> None:
    """Replace ``path`` with ``chunks`` so that after a crash it holds either the old or the new
    content, never a mix: write ``<path>.tmp``, fsync it, rename over ``path``, fsync the directory.

    A leftover ``.tmp`` (crash before the rename) is garbage; readers ignore or delete it.
    """
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    write_tmp(tmp, chunks, on_fsync)
    publish(tmp, path, on_fsync)


def write_tmp(tmp: Path, chunks: Iterable[bytes], on_fsync: FsyncHook) -> None:
    """First half of :func:`atomic_write`: write ``tmp`` (a name ending in ``.tmp``) and fsync it."""
    assert tmp.name.endswith(_TMP_SUFFIX), tmp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        fsync_fd(fd, on_fsync)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path, on_fsync: FsyncHook) -> None:
    """Second half of :func:`atomic_write`: rename the fsynced ``tmp`` over ``path``, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent, on_fsync)


def remove_leftover_tmp(directory: Path) -> list[Path]:
    """Delete ``*.tmp`` files (interrupted atomic writes) in ``directory``; returns what was removed."""
    removed = []
    for p in directory.glob("*" + _TMP_SUFFIX):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class DataDir:
    """An opened data directory, exclusively locked by this process until :meth:`close`.

    Invariant: while an instance is open, its process holds ``flock(LOCK_EX)`` on ``<root>/LOCK``,
    so no other process — and no other ``DataDir`` in this process — can open the same directory.
    The kernel drops the lock when the process dies, so a ``kill -9`` never leaves a stale lock.
    """

    __slots__ = ("_lock_fd", "cluster_id", "node_id", "root")

    def __init__(self, root: Path, lock_fd: int, node_id: str, cluster_id: str | None) -> None:
        # Use DataDir.open(); this only records what open() established.
        self.root = root
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._lock_fd: int | None = lock_fd

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def hard_state_path(self) -> Path:
        return self.root / "hard_state"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta"

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        node_id: str,
        cluster_id: str | None = None,
        on_fsync: FsyncHook = None,
    ) -> DataDir:
        """Create the layout if needed, take the lock, and check the directory belongs to ``node_id``.

        ``cluster_id`` is checked only when both the stored and the given one are known; a dir
        created without one adopts the first cluster id it is opened with.
        """
        if not node_id:
            raise ValueError("node_id must be a non-empty string")
        path = Path(root).absolute()
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(path.parent, on_fsync)
        lock_fd = _take_lock(path)
        try:
            cluster_id = _check_meta(path, node_id, cluster_id, on_fsync)
            made = False
            for sub in (path / "log", path / "snapshots"):
                if not sub.is_dir():
                    sub.mkdir()
                    made = True
            if made:
                fsync_dir(path, on_fsync)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, lock_fd, node_id, cluster_id)

    def close(self) -> None:
        """Release the lock (idempotent). The LOCK file stays: deleting it would race a new opener."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._lock_fd is None


def _take_lock(root: Path) -> int:
    lock_path = root / "LOCK"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC by default: children never inherit it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DataDirLocked(root, pid) from None
    except BaseException:
        os.close(fd)
        raise
    # The PID is only a hint for the error message of a second opener; the flock is the lock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
    return None


def _check_meta(root: Path, node_id: str, cluster_id: str | None, on_fsync: FsyncHook) -> str | None:
    """Validate ``<root>/meta`` against the given ids (writing it at first start); returns the cluster id."""
    meta_path = root / "meta"
    remove_leftover_tmp(root)
    if not meta_path.exists():
        # A dir with raft data but no meta was not created by us (or was tampered with): refuse it
        # rather than adopt someone else's log under our node id.
        if _holds_raft_data(root):
            raise StorageCorruption(meta_path, "missing, but the directory holds raft data")
        _write_meta(meta_path, node_id, cluster_id, on_fsync)
        return cluster_id
    try:
        meta = json.loads(meta_path.read_bytes())
        stored_node = meta["node_id"]
        stored_cluster = meta["cluster_id"]
        if meta["format"] != _META_FORMAT or not isinstance(stored_node, str):
            raise ValueError(f"unsupported format {meta['format']!r}")
        if stored_cluster is not None and not isinstance(stored_cluster, str):
            raise ValueError("cluster_id is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageCorruption(meta_path, f"unreadable node meta file ({exc})") from exc
    if stored_node != node_id:
        raise DataDirMismatch(root, "node id", stored_node, node_id)
    if stored_cluster is not None and cluster_id is not None and stored_cluster != cluster_id:
        raise DataDirMismatch(root, "cluster id", stored_cluster, cluster_id)
    if stored_cluster is None and cluster_id is not None:
        _write_meta(meta_path, node_id, cluster_id, on_fsync)
        return cluster_id
    return stored_cluster


def _write_meta(path: Path, node_id: str, cluster_id: str | None, on_fsync: FsyncHook) -> None:
    body = {"format": _META_FORMAT, "node_id": node_id, "cluster_id": cluster_id}
    atomic_write(path, [json.dumps(body, indent=1).encode() + b"\n"], on_fsync)


def _holds_raft_data(root: Path) -> bool:
    if (root / "hard_state").exists():
        return True
    return any(any(d.iterdir()) for d in (root / "log", root / "snapshots") if d.is_dir())
