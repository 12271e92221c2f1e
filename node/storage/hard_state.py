"""The durable hard state (term, vote, commit) in ``<data_dir>/hard_state``.

File format (big-endian)::

    magic b"RSHS" | version u8 | crc32(payload) u32 | payload = msgpack([term, vote, commit])

Invariant: the file always holds one complete, CRC-valid hard state, because every write replaces it
atomically (temp file, fsync, rename, directory fsync). A file that fails validation therefore means
damage, not a crash mid-write, and is reported as :class:`StorageCorruption`.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgpack

from raftstate.node.storage.data_dir import FsyncHook, atomic_write
from raftstate.node.storage.errors import StorageCorruption
from raftstate.raft.messages import HardState

__all__ = ["HardStateFile"]

_MAGIC = b"RSHS"
_VERSION = 1
_HEADER = struct.Struct(">4sBI")


def encode_hard_state(hs: HardState) -> bytes:
    payload: bytes = msgpack.packb([hs.term, hs.vote, hs.commit], use_bin_type=True)
    return _HEADER.pack(_MAGIC, _VERSION, zlib.crc32(payload)) + payload


def decode_hard_state(path: Path, raw: bytes) -> HardState:
    if len(raw) < _HEADER.size:
        raise StorageCorruption(path, f"hard state file is {len(raw)} bytes, shorter than its header")
    magic, version, crc = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise StorageCorruption(path, f"not a hard state file (magic {magic!r})")
    if version != _VERSION:
        raise StorageCorruption(path, f"unsupported hard state version {version}")
    payload = raw[_HEADER.size :]
    if zlib.crc32(payload) != crc:
        raise StorageCorruption(path, "hard state CRC mismatch")
    try:
        term, vote, commit = msgpack.unpackb(payload, raw=False)
        valid = (
            isinstance(term, int)
            and isinstance(commit, int)
            and term >= 0
            and commit >= 0
            and (vote is None or isinstance(vote, str))
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise StorageCorruption(path, f"hard state payload is not decodable ({exc})") from exc
    if not valid:
        raise StorageCorruption(path, f"hard state has invalid fields {[term, vote, commit]!r}")
    return HardState(term=term, vote=vote, commit=commit)


class HardStateFile:
    """Reads and atomically replaces the hard state file. Not thread-safe (DiskStorage serializes)."""

    __slots__ = ("_on_fsync", "path")

    def __init__(self, path: Path, *, on_fsync: FsyncHook = None) -> None:
        self.path = path
        self._on_fsync = on_fsync

    def load(self) -> HardState | None:
        """The stored hard state, or None for a node that never saved one.

        A leftover ``hard_state.tmp`` is an interrupted write whose rename never happened: the
        previous file is still the truth, so the temp file is deleted.
        """
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return decode_hard_state(self.path, raw)

    def save(self, hs: HardState) -> None:
        """Durable when this returns (two fsyncs: the temp file, then the directory after the rename)."""
        assert hs.term >= 0 and hs.commit >= 0, hs
        atomic_write(self.path, [encode_hard_state(hs)], self._on_fsync)
