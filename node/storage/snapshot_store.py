"""Snapshot files in ``<data_dir>/snapshots/``: ``snap-<index, 20 digits>-<term>.snap``.

File format (big-endian)::

    magic b"RAFTSNAP" | version u16 | meta_len u32 | data_len u64      (header, 22 bytes)
    meta = msgpack(meta_to_wire(SnapshotMeta))                         (meta_len bytes)
    data = the application's snapshot bytes                           (data_len bytes)
    crc32 of everything above, u32

Invariants:
    - a ``.snap`` file is complete when it appears: written as ``.snap.<tag>.tmp``, fsynced,
      renamed, directory fsynced; leftover ``.tmp`` files are deleted on open;
    - a ``.snap`` file is immutable once named (only ever deleted by pruning or renamed
      ``.corrupt``), so it may be read without the writer's lock;
    - its name agrees with its meta (index, term), and its size with its header;
    - at most ``retain`` (2) snapshots are kept, the newest by index: the older one is a fallback
      should the newest ever fail validation (see DiskStorage.load for when that fallback is legal);
    - a snapshot found corrupt and replaced by a fallback is renamed ``*.snap.corrupt`` (kept for
      analysis, never read again).
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from raftstate.node.storage.data_dir import FsyncHook, publish, remove_leftover_tmp, write_tmp
from raftstate.node.storage.errors import StorageCorruption
from raftstate.raft.messages import SnapshotMeta, meta_from_wire, meta_to_wire

__all__ = ["SnapshotRef", "SnapshotStore", "StagedSnapshot"]

log = logging.getLogger(__name__)

_MAGIC = b"RAFTSNAP"
_VERSION = 1
_HEADER = struct.Struct(">8sHIQ")
_TRAILER = struct.Struct(">I")
_NAME = re.compile(r"^snap-(\d{20})-(\d+)\.snap$")
DEFAULT_RETAIN = 2


@dataclass(frozen=True, slots=True, order=True)
class SnapshotRef:
    """A snapshot file, ordered by (index, term): the larger one is the newer."""

    index: int
    term: int
    path: Path


@dataclass(frozen=True, slots=True)
class StagedSnapshot:
    """A snapshot written and fsynced under a temporary name, not yet published as ``ref``."""

    ref: SnapshotRef
    tmp: Path


def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term}.snap"


class SnapshotStore:
    """Writes, lists, reads and prunes snapshot files. Not thread-safe (DiskStorage serializes),
    except :meth:`stage` (distinct tags) and :meth:`read`, which touch no shared state."""

    __slots__ = ("_on_fsync", "directory", "retain")

    def __init__(self, directory: Path, *, retain: int = DEFAULT_RETAIN, on_fsync: FsyncHook = None) -> None:
        assert retain >= 1, retain
        self.directory = directory
        self.retain = retain
        self._on_fsync = on_fsync
        for p in remove_leftover_tmp(directory):
            log.info("removed %s: a snapshot write interrupted before its rename", p)

    def list(self) -> list[SnapshotRef]:
        """Snapshot files by name, newest first. Says nothing about validity: see :meth:`read`."""
        refs = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                refs.append(SnapshotRef(int(m[1]), int(m[2]), p))
        return sorted(refs, reverse=True)

    def ref(self, index: int, term: int) -> SnapshotRef:
        return SnapshotRef(index, term, self.directory / snapshot_name(index, term))

    def write(self, meta: SnapshotMeta, data: bytes) -> SnapshotRef:
        """Store a snapshot durably, then delete all but the newest ``retain`` snapshots."""
        staged = self.stage(meta, data, tag="install")
        return self.publish(staged)

    def stage(self, meta: SnapshotMeta, data: bytes, *, tag: str) -> StagedSnapshot:
        """The slow half of :meth:`write`: the whole file written and fsynced under a temporary
        name no reader lists (``<name>.<tag>.tmp``; callers staging at the same time use different
        tags). Safe without the caller's lock: it touches no file :meth:`list` returns."""
        meta_bytes: bytes = msgpack.packb(meta_to_wire(meta), use_bin_type=True)
        header = _HEADER.pack(_MAGIC, _VERSION, len(meta_bytes), len(data))
        crc = zlib.crc32(data, zlib.crc32(meta_bytes, zlib.crc32(header)))
        ref = self.ref(meta.index, meta.term)
        tmp = ref.path.with_name(f"{ref.path.name}.{tag}.tmp")
        # Chunks, not one concatenation: the application's data may be large.
        write_tmp(tmp, [header, meta_bytes, data, _TRAILER.pack(crc)], self._on_fsync)
        return StagedSnapshot(ref, tmp)

    def publish(self, staged: StagedSnapshot) -> SnapshotRef:
        """The quick half of :meth:`write`: rename the staged file to its name (durably), then
        delete all but the newest ``retain`` snapshots. From here on the file is immutable."""
        publish(staged.tmp, staged.ref.path, self._on_fsync)
        self._prune()
        return staged.ref

    def discard(self, staged: StagedSnapshot) -> None:
        """Delete a staged file that will not be published (superseded, or its write failed)."""
        staged.tmp.unlink(missing_ok=True)

    def read(self, ref: SnapshotRef) -> tuple[SnapshotMeta, bytes]:
        """Read and fully validate one snapshot file; :class:`StorageCorruption` if anything is off."""
        raw = memoryview(ref.path.read_bytes())
        path = ref.path
        if len(raw) < _HEADER.size + _TRAILER.size:
            raise StorageCorruption(path, f"snapshot file is {len(raw)} bytes, shorter than its framing")
        magic, version, meta_len, data_len = _HEADER.unpack_from(raw)
        if magic != _MAGIC:
            raise StorageCorruption(path, f"not a snapshot file (magic {bytes(magic)!r})", offset=0)
        if version != _VERSION:
            raise StorageCorruption(path, f"unsupported snapshot version {version}", offset=8)
        expected = _HEADER.size + meta_len + data_len + _TRAILER.size
        if expected != len(raw):
            raise StorageCorruption(
                path, f"snapshot file is {len(raw)} bytes but its header says {expected}", offset=10
            )
        body_end = len(raw) - _TRAILER.size
        (crc,) = _TRAILER.unpack_from(raw, body_end)
        if zlib.crc32(raw[:body_end]) != crc:
            raise StorageCorruption(path, "snapshot CRC mismatch", offset=body_end)
        meta_end = _HEADER.size + meta_len
        try:
            meta = meta_from_wire(msgpack.unpackb(raw[_HEADER.size : meta_end], raw=False))
        except Exception as exc:  # msgpack and the dataclasses raise several unrelated types
            reason = f"snapshot meta not decodable ({exc})"
            raise StorageCorruption(path, reason, offset=_HEADER.size) from exc
        if (meta.index, meta.term) != (ref.index, ref.term):
            raise StorageCorruption(
                path, f"file name says index {ref.index} term {ref.term}, content {meta.index}/{meta.term}"
            )
        return meta, bytes(raw[meta_end:body_end])

    def quarantine(self, ref: SnapshotRef) -> Path:
        """Rename a corrupt snapshot out of the way (kept for analysis, never listed again)."""
        dest = ref.path.with_name(ref.path.name + ".corrupt")
        ref.path.rename(dest)
        return dest

    def _prune(self) -> None:
        # No directory fsync: if a deletion is lost in a crash, an extra old snapshot reappears,
        # which is harmless (load picks the newest valid one).
        for old in self.list()[self.retain :]:
            old.path.unlink(missing_ok=True)
