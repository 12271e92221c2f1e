"""The segmented, append-only Raft log on disk: ``<data_dir>/log/log-<first index, 20 digits>.seg``.

Record format (big-endian)::

    length u32 | crc32(payload) u32 | payload = msgpack(entry_to_wire(entry))

Invariants (validated by :meth:`SegmentedLog.open`, kept by every method):
    - segments are sorted by first index and contiguous: a segment's first index is its
      predecessor's last index + 1, and records inside a segment have consecutive indexes;
    - terms never decrease along the log (a Raft invariant; a violation means damage);
    - only the last segment is ever written, and a segment is fsynced *before* its successor is
      created, so a crash can tear a record only at the tail of the last segment;
    - a truncation is fsynced *before* new records are written over the truncated region, so old
      and new records never interleave on disk after a crash;
    - segments that come after a truncation point are deleted newest first, each deletion made
      durable before the next, so a crash leaves a contiguous prefix, never a hole.

Durability: :meth:`append` writes without fsync; :meth:`sync` makes everything appended so far
durable with one fdatasync per dirty segment plus one directory fsync if segments were created or
deleted (group commit). Callers must not acknowledge anything before ``sync`` returns.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from raftstate.node.storage.data_dir import FsyncHook, fsync_dir, fsync_fd, write_all
from raftstate.node.storage.errors import StorageCorruption, StorageError
from raftstate.raft.messages import Entry, entry_from_wire, entry_to_wire

__all__ = ["DEFAULT_SEGMENT_BYTES", "MAX_RECORD_BYTES", "SegmentedLog", "encode_record", "segment_name"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: Largest payload of one record; a longer length field is damage (limits on everything).
MAX_RECORD_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct(">II")
_NAME = re.compile(r"^log-(\d{20})\.seg$")
#: First payload byte of every record: msgpack's array header for the entry's field count. Computed
#: rather than hard-coded so that the tail scan below follows any change of entry_to_wire.
_PAYLOAD_LEAD = bytes(msgpack.packb(entry_to_wire(Entry(0, 0, 0)))[:1])
#: How many payload bytes the tail scan may checksum before it gives up and reports corruption.
_SCAN_BUDGET_BYTES = 128 * 1024 * 1024


def segment_name(first_index: int) -> str:
    return f"log-{first_index:020d}.seg"


def encode_record(entry: Entry) -> bytes:
    payload: bytes = msgpack.packb(entry_to_wire(entry), use_bin_type=True)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"entry {entry.index} encodes to {len(payload)} bytes > {MAX_RECORD_BYTES}")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(slots=True)
class _Segment:
    path: Path
    first_index: int
    #: offsets[k] is the byte offset of record first_index + k; empty when not loaded
    offsets: list[int] = field(default_factory=list)
    #: bytes of valid records == the file's size once open() has repaired a torn tail
    size: int = 0
    #: False for a segment wholly covered by the snapshot: never read, only ever deleted
    loaded: bool = True

    @property
    def last_index(self) -> int:
        assert self.loaded, self.path
        return self.first_index + len(self.offsets) - 1


class _BadRecord(StorageError):
    """A record that failed validation. Never leaves this module: the reader truncates a torn tail
    or raises StorageCorruption."""

    def __init__(self, reason: str, *, may_be_torn: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        #: False when the CRC matched: those bytes were written like this (a bug), not torn by a crash
        self.may_be_torn = may_be_torn


class SegmentedLog:
    """The on-disk log. Not thread-safe: DiskStorage serializes calls.

    ``next_index`` is the index the next appended entry must have (or any index from ``first_index``
    on, which truncates first). An empty log starts at the index given to :meth:`open`/:meth:`reset`.
    """

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        next_index: int,
        *,
        segment_bytes: int,
        on_fsync: FsyncHook,
    ) -> None:
        # Use SegmentedLog.open(); this only records what recovery established.
        assert segment_bytes > 0, segment_bytes
        self.directory = directory
        self._segments = segments
        self._next_index = next_index
        self._segment_bytes = segment_bytes
        self._on_fsync = on_fsync
        #: fd of the last segment, opened on first append; only this segment is ever written
        self._fd: int | None = None
        self._fd_dirty = False  # written since its last fsync
        self._dir_dirty = False  # a segment was created or deleted since the last directory fsync

    # ----------------------------------------------------------------- queries

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def last_index(self) -> int:
        return self._next_index - 1

    @property
    def first_index(self) -> int:
        """First index that may still be appended over (entries before it are snapshot-covered)."""
        for s in self._segments:
            if s.loaded:
                return s.first_index
        return self._next_index

    def entry(self, index: int) -> Entry:
        """Read back one stored entry (``first_index <= index <= last_index``)."""
        if not self.first_index <= index <= self.last_index:
            raise ValueError(f"index {index} is not stored ({self.first_index}..{self.last_index})")
        firsts = [s.first_index for s in self._segments]
        seg = self._segments[bisect.bisect_right(firsts, index) - 1]
        k = index - seg.first_index
        end = seg.offsets[k + 1] if k + 1 < len(seg.offsets) else seg.size
        with open(seg.path, "rb") as f:
            f.seek(seg.offsets[k])
            raw = f.read(end - seg.offsets[k])
        entry, _ = _parse_record(memoryview(raw), 0)
        return entry

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        skip_through: int = 0,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_fsync: FsyncHook = None,
    ) -> tuple[SegmentedLog, list[Entry]]:
        """Recover the log: validate every record, repair a torn tail, return the stored entries.

        ``skip_through`` is the snapshot index: a segment whose successor starts at or below
        ``skip_through + 1`` holds only snapshot-covered entries, so it is not read (a compaction
        interrupted by a crash may have left such segments behind, even with holes between them).
        The returned entries are contiguous; they may start at or below ``skip_through`` — the
        caller connects them to the snapshot. An empty log's ``next_index`` is ``skip_through + 1``
        unless an empty segment file names another start.
        """
        trash = _trash_dir(directory)
        if trash.exists():  # a reset() interrupted after its atomic rename: finish it
            shutil.rmtree(trash)
        directory.mkdir(exist_ok=True)
        segments = sorted(
            (_Segment(p, int(m[1])) for p in directory.iterdir() if (m := _NAME.match(p.name))),
            key=lambda s: s.first_index,
        )
        for k, seg in enumerate(segments[:-1]):
            if segments[k + 1].first_index <= skip_through + 1:
                seg.loaded = False
        entries: list[Entry] = []
        loaded = [s for s in segments if s.loaded]
        for k, seg in enumerate(loaded):
            is_last = k == len(loaded) - 1
            if entries and seg.first_index != entries[-1].index + 1:
                raise StorageCorruption(
                    seg.path,
                    f"segment starts at index {seg.first_index}, but the previous segment ends at "
                    f"{entries[-1].index}: the log is not contiguous",
                    offset=0,
                    index=seg.first_index,
                )
            prev_term = entries[-1].term if entries else 0
            entries.extend(_recover_segment(seg, is_last, prev_term, on_fsync))
            if not seg.offsets and not is_last:
                raise StorageCorruption(seg.path, "empty segment before the last one", offset=0)
        if loaded:
            next_index = loaded[-1].first_index + len(loaded[-1].offsets)
        else:
            next_index = skip_through + 1
        return cls(directory, segments, next_index, segment_bytes=segment_bytes, on_fsync=on_fsync), entries

    # ----------------------------------------------------------------- changes

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (not yet durable: call :meth:`sync`).

        If the first entry's index is below :attr:`next_index`, the stored log is first truncated
        from that index (a leader overwrote a conflicting suffix). Raises ValueError, writing
        nothing, if the entries are not contiguous or would leave a gap.
        """
        if not entries:
            return
        first = entries[0].index
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise ValueError(f"entries are not contiguous: index {e.index} at position {k} after {first}")
        if not self.first_index <= first <= self._next_index:
            raise ValueError(
                f"cannot append at index {first}: the log accepts {self.first_index}..{self._next_index}"
            )
        records = [encode_record(e) for e in entries]  # before any change: may raise ValueError
        if first < self._next_index:
            self._truncate_from(first)
        self._write(first, records)

    def sync(self) -> None:
        """Make every append so far durable (one fdatasync, plus a directory fsync if needed)."""
        if self._fd is not None and self._fd_dirty:
            fsync_fd(self._fd, self._on_fsync, data_only=True)
            self._fd_dirty = False
        if self._dir_dirty:
            fsync_dir(self.directory, self._on_fsync)
            self._dir_dirty = False

    def compact(self, index: int) -> None:
        """Delete whole segments whose entries are all <= ``index``; the last segment always stays.

        Deletions are made durable lazily (next :meth:`sync`): should a crash undo some of them,
        :meth:`open` skips segments below the snapshot anyway.
        """
        while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
            seg = self._segments.pop(0)
            seg.path.unlink()
            self._dir_dirty = True

    def reset(self, next_index: int) -> None:
        """Discard the whole log (a snapshot from the leader replaced it); the next append must
        have ``next_index``. Durable when this returns, and atomic: the directory is renamed away in
        one step, so a crash leaves either the old log or an empty one, never part of it."""
        assert next_index >= 1, next_index
        self._close_fd()
        trash = _trash_dir(self.directory)
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(self.directory, trash)
        self.directory.mkdir()
        fsync_dir(self.directory.parent, self._on_fsync)
        shutil.rmtree(trash)  # no fsync needed: open() finishes the job after a crash
        self._segments = []
        self._next_index = next_index
        self._dir_dirty = False

    def close(self) -> None:
        """Close the open segment. Does not sync: callers sync before acknowledging anything."""
        self._close_fd()

    # ----------------------------------------------------------------- internals

    def _truncate_from(self, index: int) -> None:
        firsts = [s.first_index for s in self._segments]
        k = bisect.bisect_right(firsts, index) - 1
        seg = self._segments[k]
        assert seg.loaded and seg.first_index <= index <= seg.last_index, (index, seg)
        if k + 1 < len(self._segments):
            self._close_fd()  # it belongs to the last segment, about to be deleted
        # Newest first, each deletion durable before the next: a crash leaves a contiguous prefix.
        for later in reversed(self._segments[k + 1 :]):
            later.path.unlink()
            fsync_dir(self.directory, self._on_fsync)
        del self._segments[k + 1 :]
        offset = seg.offsets[index - seg.first_index]
        fd = self._active_fd()
        os.ftruncate(fd, offset)
        # Durable before new records overwrite the region, so a crash never mixes old and new records.
        fsync_fd(fd, self._on_fsync)
        self._fd_dirty = False
        del seg.offsets[index - seg.first_index :]
        seg.size = offset
        self._next_index = index

    def _write(self, first: int, records: list[bytes]) -> None:
        if not self._segments:
            self._new_segment(first)
        seg = self._segments[-1]
        assert seg.first_index + len(seg.offsets) == first == self._next_index, (seg, first)
        buf = bytearray()
        offsets: list[int] = []
        for k, rec in enumerate(records):
            pending = seg.size + len(buf)
            if pending > 0 and pending + len(rec) > self._segment_bytes:
                self._flush(seg, buf, offsets)
                buf, offsets = bytearray(), []
                # The old segment is durable before its successor exists: tears stay in the last one.
                self.sync()
                self._new_segment(first + k)
                seg = self._segments[-1]
            offsets.append(seg.size + len(buf))
            buf += rec
        self._flush(seg, buf, offsets)
        self._next_index = first + len(records)

    def _flush(self, seg: _Segment, buf: bytearray, offsets: list[int]) -> None:
        if buf:
            write_all(self._active_fd(), buf)
            self._fd_dirty = True
            seg.offsets.extend(offsets)
            seg.size += len(buf)

    def _new_segment(self, first_index: int) -> None:
        self._close_fd()
        path = self.directory / segment_name(first_index)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._segments.append(_Segment(path, first_index))
        self._dir_dirty = True

    def _active_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fd_dirty = False


def _trash_dir(directory: Path) -> Path:
    return directory.with_name(directory.name + ".discard")


# --------------------------------------------------------------------------- recovery


def _recover_segment(seg: _Segment, is_last: bool, prev_term: int, on_fsync: FsyncHook) -> list[Entry]:
    """Parse one segment into entries, filling ``seg.offsets``/``seg.size``.

    A bad record in the last segment with nothing valid after it is a write torn by a crash: the
    file is truncated there (durably) with a warning. Anything else invalid raises StorageCorruption.
    """
    raw = seg.path.read_bytes()
    data = memoryview(raw)
    entries: list[Entry] = []
    pos = 0
    while pos < len(data):
        index = seg.first_index + len(entries)
        try:
            entry, end = _parse_record(data, pos)
        except _BadRecord as bad:
            if not (is_last and bad.may_be_torn):
                raise StorageCorruption(seg.path, bad.reason, offset=pos, index=index) from None
            after = _find_valid_record(raw, pos + 1, index)
            if after is not None:
                reason = f"{bad.reason}, yet a valid record follows at byte offset {after}: not a torn write"
                raise StorageCorruption(seg.path, reason, offset=pos, index=index) from None
            log.warning(
                "%s: torn record at byte offset %d (entry index %d: %s); truncating %d trailing bytes "
                "(the tail of a write a crash interrupted before it was synced, so never acknowledged)",
                seg.path,
                pos,
                index,
                bad.reason,
                len(data) - pos,
            )
            _truncate_file(seg.path, pos, on_fsync)
            break
        if entry.index != index:
            raise StorageCorruption(
                seg.path, f"record holds index {entry.index}, expected {index}", offset=pos, index=index
            )
        if entry.term < prev_term:
            raise StorageCorruption(
                seg.path, f"term goes backwards ({prev_term} then {entry.term})", offset=pos, index=index
            )
        prev_term = entry.term
        seg.offsets.append(pos)
        entries.append(entry)
        pos = end
    seg.size = pos
    return entries


def _parse_record(data: memoryview, pos: int) -> tuple[Entry, int]:
    """The entry at ``pos`` and the offset after it; _BadRecord if it is torn or damaged."""
    if len(data) - pos < _HEADER.size:
        raise _BadRecord(f"short record header ({len(data) - pos} of {_HEADER.size} bytes)")
    length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    if not 0 < length <= MAX_RECORD_BYTES:
        raise _BadRecord(f"invalid record length {length}")
    if start + length > len(data):
        raise _BadRecord(f"short record payload ({len(data) - start} of {length} bytes)")
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        raise _BadRecord("record CRC mismatch")
    try:
        entry = entry_from_wire(msgpack.unpackb(payload, raw=False))
    except Exception as exc:  # msgpack raises several unrelated types
        raise _BadRecord(f"record payload is not an entry ({exc})", may_be_torn=False) from exc
    return entry, start + length


def _find_valid_record(raw: bytes, start: int, min_index: int) -> int | None:
    """Offset of a well-formed record (fits, CRC matches, holds an entry with index >= min_index)
    starting at or after ``start``; None if there is none.

    This tells a torn tail from damage in the middle: a flipped bit in a length field can make a
    record look as if it ran past the end of the file, and only a valid record after it shows that
    truncating would drop acknowledged data. Candidates are found by the payload's first byte;
    should the scan exceed its checksum budget it answers ``start`` ("cannot rule it out"), which
    errs on the side of refusing to start rather than dropping data.
    """
    data = memoryview(raw)
    budget = _SCAN_BUDGET_BYTES
    lead_at = start + _HEADER.size
    while (lead_at := raw.find(_PAYLOAD_LEAD, lead_at)) >= 0:
        off = lead_at - _HEADER.size
        lead_at += 1
        length, crc = _HEADER.unpack_from(data, off)
        if not 0 < length <= min(MAX_RECORD_BYTES, len(data) - off - _HEADER.size):
            continue
        budget -= length
        if budget < 0:
            return start
        payload = data[off + _HEADER.size : off + _HEADER.size + length]
        if zlib.crc32(payload) != crc:
            continue
        try:
            entry = entry_from_wire(msgpack.unpackb(payload, raw=False))
        except Exception:  # a CRC collision on garbage
            continue
        if entry.index >= min_index:
            return off
    return None


def _truncate_file(path: Path, size: int, on_fsync: FsyncHook) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.truncate(fd, size)
        # Durable before anything is appended over the dropped bytes (see the module invariants).
        fsync_fd(fd, on_fsync)
    finally:
        os.close(fd)
