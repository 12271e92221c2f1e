"""The state machine's file: ``<data_dir>/state/state.db``, an SQLite database in WAL mode.

The replicated state lives here (its tables: node/state/tables.py), not in the heap, so a node's
memory is set by the cache size, not by the key count, and a restart opens the file instead of
decoding a snapshot. docs/storage-engine.md has the measurements behind the choice.

Durability (the applied index is committed with the data it covers, node/state/machine.py):

    apply           writes into a transaction on the event loop's connection; the driver commits
                    after each batch of applied entries — into the WAL, without fsync
                    (``synchronous=NORMAL``): a kill -9 loses nothing committed, a power cut may
                    lose the newest commits, which the Raft log (fsynced) still holds
    checkpoint      :meth:`StateFile.checkpoint`, in a worker thread with its own connection, copies
                    the WAL into the database file and fsyncs it, and says which applied index is
                    now durable; only then may the Raft log be compacted up to that index
                    (``wal_autocheckpoint`` is off, so no checkpoint ever runs on the loop)
    copy            :meth:`StateFile.copy_to`: a consistent copy (SQLite's online backup, a read
                    transaction: applies go on) for a follower that needs the whole state
    install         :meth:`StateFile.install`: a received copy replaces the file (old WAL removed
                    first, then an atomic rename, directory fsynced)

A file that is not an SQLite database, or shorter than its header says (truncated), refuses to
open with :class:`StorageCorruption` naming it; corruption found later surfaces as
``sqlite3.DatabaseError`` from apply, which stops the node (the driver's fatal path).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from raftstate.node.storage.data_dir import FsyncHook, fsync_dir, fsync_fd
from raftstate.node.storage.errors import StorageCorruption

__all__ = ["DEFAULT_CACHE_MB", "StateFile", "StoreDescriptor"]

log = logging.getLogger(__name__)

#: SQLite page cache of the apply connection (settings.state_cache_mb): the node's memory for state
DEFAULT_CACHE_MB: Final = 64
_HEADER_MAGIC: Final = b"SQLite format 3\x00"
_NAME: Final = "state.db"
_INCOMING: Final = "incoming-"
#: how long the RESTART checkpoint waits for short reads to end
_RESTART_WAIT_S: Final = 1.0
#: a WAL reset to its start is truncated to this size
_WAL_KEEP_BYTES: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class StoreDescriptor:
    """What a snapshot holds when the state lives in a store: not the state, but the applied index
    the store is durable at (and, while a received copy waits to be installed, where it lies)."""

    applied_index: int
    #: a received copy of the store not installed yet (only between receipt and install)
    file: str | None = None

    FORMAT = 3  # after the msgpack state formats 1 and 2 (node/state/machine.py)

    def encode(self) -> bytes:
        body: dict[str, Any] = {"format": self.FORMAT, "store": "sqlite", "applied_index": self.applied_index}
        if self.file is not None:
            body["file"] = self.file
        out: bytes = msgpack.packb(body, use_bin_type=True)
        return out

    @classmethod
    def decode(cls, data: bytes) -> StoreDescriptor | None:
        """The descriptor in ``data``, or None when ``data`` is a whole state (formats 1 and 2)."""
        if len(data) > 4096:
            return None  # a descriptor is tiny; never unpack a whole state to find out
        try:
            body = msgpack.unpackb(data, raw=False)
        except Exception:
            return None
        if not isinstance(body, dict) or body.get("format") != cls.FORMAT:
            return None
        file = body.get("file")
        return cls(int(body["applied_index"]), None if file is None else str(file))


class StateFile:
    def __init__(
        self,
        directory: Path,
        *,
        cache_mb: int = DEFAULT_CACHE_MB,
        on_fsync: FsyncHook = None,
        wal_keep_bytes: int = _WAL_KEEP_BYTES,
    ) -> None:
        assert cache_mb >= 1, cache_mb
        self.directory = directory
        self.path = directory / _NAME
        self.cache_mb = cache_mb
        self.wal_keep_bytes = wal_keep_bytes
        self._on_fsync = on_fsync
        #: whole-state reads in progress (they hold WAL frames: no RESTART checkpoint meanwhile)
        self._long_readers = 0
        if not directory.is_dir():
            directory.mkdir(parents=True)
            fsync_dir(directory.parent, on_fsync)
        for leftover in directory.glob(f"{_INCOMING}*"):
            leftover.unlink(missing_ok=True)
            log.info("removed %s: a state copy left by an interrupted transfer", leftover)

    # ----------------------------------------------------------------- the loop's connection

    def connect(self) -> sqlite3.Connection:
        """The connection apply and reads use (the event loop's thread; also closable from a
        worker thread while nothing else uses it). Validates the file first."""
        self._check_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageCorruption(
                    self.path, f"cannot switch the state store to WAL mode (it is {mode!r})"
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={self.wal_keep_bytes}")  # a reset WAL shrinks to this
            conn.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads page 1 and the schema
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StorageCorruption(self.path, f"the state store cannot be read ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def reader(self) -> tuple[sqlite3.Connection, Callable[[], None]]:
        """A connection of its own for a whole-state read in a worker thread (digest, backup), and
        the function that closes it (until then the checkpoint does not RESTART the WAL)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._long_readers += 1
        done = False

        def close() -> None:
            nonlocal done
            conn.close()
            if not done:
                done = True
                self._long_readers -= 1

        return conn, close

    # ----------------------------------------------------------------- worker threads

    def checkpoint(self) -> int | None:
        """Make everything committed so far durable in the database file (a PASSIVE checkpoint:
        apply goes on meanwhile). Returns the applied index it covers (None: not everything could
        be copied this time; try again later)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            row = conn.execute("SELECT value FROM meta WHERE name = 'applied_index'").fetchone()
            applied = int(row[0]) if row is not None else 0
            t0 = time.perf_counter()
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if self._on_fsync is not None:
                self._on_fsync(time.perf_counter() - t0)
        finally:
            conn.close()
        if busy or copied < frames:
            log.info("state checkpoint incomplete (%d of %d WAL frames); retrying later", copied, frames)
            return None
        return applied

    def restart_wal(self) -> bool:
        """Copy the rest of the WAL and have the next transaction write it from its start again
        (a RESTART checkpoint). Call it while apply begins no transaction (the driver holds its
        apply lock): under a steady stream of commits a PASSIVE checkpoint never finds the WAL
        fully copied when a transaction begins, so the WAL would never be reused and would grow
        without bound (1.3 GB at 150k keys, measured). Skipped (False) while a long reader (a copy
        for a follower, a digest) is open: RESTART would wait for it."""
        if self._long_readers:
            return False
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=_RESTART_WAIT_S)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            t0 = time.perf_counter()
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if self._on_fsync is not None:
                self._on_fsync(time.perf_counter() - t0)
        finally:
            conn.close()
        return not busy

    def copy_to(self, directory: Path) -> tuple[Path, int]:
        """A consistent copy of the committed state in a new file in ``directory`` (the caller
        deletes it), and the applied index it holds. Applies go on meanwhile (a read transaction)."""
        dest = directory / f"{_INCOMING}copy-{os.getpid()}-{time.monotonic_ns()}.db"
        src = sqlite3.connect(self.path, isolation_level=None)
        self._long_readers += 1
        try:
            out = sqlite3.connect(dest, isolation_level=None)
            try:
                src.backup(out)
                row = out.execute("SELECT value FROM meta WHERE name = 'applied_index'").fetchone()
            finally:
                out.close()
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            src.close()
            self._long_readers -= 1
        return dest, int(row[0]) if row is not None else 0

    def check_copy(self, path: Path) -> int:
        """Validate a received copy (before it may replace the store); its applied index."""
        self._check_file(path)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            (ok,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if ok != "ok":
                raise StorageCorruption(path, f"the received state copy fails SQLite's quick_check: {ok}")
            row = conn.execute("SELECT value FROM meta WHERE name = 'applied_index'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageCorruption(path, f"the received state copy cannot be read ({exc})") from exc
        finally:
            conn.close()
        if row is None:
            raise StorageCorruption(path, "the received state copy has no applied index: not a state store")
        return int(row[0])

    def replace_with(self, copy: Path) -> None:
        """Replace the store by ``copy``, a durable file (fsynced) in this directory; the caller
        has closed every connection to the store and calls :meth:`sync_dir` before relying on it.
        The old WAL goes first: replayed over the new file it would corrupt it. Quick (renames)."""
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        os.replace(copy, self.path)

    def sync_file(self, path: Path) -> None:
        with open(path, "rb+") as f:
            fsync_fd(f.fileno(), self._on_fsync)

    def sync_dir(self) -> None:
        fsync_dir(self.directory, self._on_fsync)

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total

    # ----------------------------------------------------------------- checks

    @staticmethod
    def _check_file(path: Path) -> None:
        """Refuse a file that is not an SQLite database or is shorter than its header says."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return  # a new store
        if size == 0:
            return  # created, never written (a crash right after creating it)
        with open(path, "rb") as f:
            header = f.read(100)
        if len(header) < 100 or header[:16] != _HEADER_MAGIC:
            raise StorageCorruption(path, "not an SQLite database (bad header)", offset=0)
        (page_size,) = struct.unpack_from(">H", header, 16)
        page_size = 65536 if page_size == 1 else page_size
        change, pages = struct.unpack_from(">II", header, 24)
        (valid_for,) = struct.unpack_from(">I", header, 92)
        if change == valid_for and size < pages * page_size:
            raise StorageCorruption(
                path, f"the state store is truncated: {size} bytes, its header says {pages * page_size}"
            )
