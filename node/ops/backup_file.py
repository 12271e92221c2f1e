"""The backup file written by ``raftstate snapshot save``: one consistent state-machine snapshot.

Layout (every integer big-endian)::

    MAGIC            17 bytes  b"RAFTSTATE-BACKUP\\x00"
    header length     4 bytes
    header           JSON: format, cluster_id, index, term, time_ms, base_index, data_bytes,
                     data_sha256, node, created_at
    data             data_bytes bytes: the leader's stored snapshot at base_index and the log
                     entries up to index (node/ops/backup_state.py says why and how to read it)
    trailer          32 bytes: SHA-256 of everything before it

The trailer makes a truncated or bit-flipped file detectable without trusting any field of it;
the data checksum in the header says which part is damaged. Readers refuse, naming the file, what
is wrong and what to do; nothing is ever restored from a file that does not verify.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftstate.node.errors import LocalFault

__all__ = ["BackupError", "BackupHeader", "read_backup", "stream_backup"]

MAGIC = b"RAFTSTATE-BACKUP\x00"
FORMAT = 1
TRAILER_BYTES = 32
MAX_HEADER_BYTES = 1 << 16
CHUNK_BYTES = 1 << 20


class BackupError(LocalFault):
    """A backup file that cannot be used: the message names the file, the problem and the fix."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    cluster_id: str
    index: int  #: the applied index the state is at (after a ReadIndex barrier on the leader)
    term: int  #: the term of the entry at ``index``
    time_ms: int  #: cluster time at ``index`` (restored clusters continue from it, never below)
    base_index: int  #: the index of the snapshot inside; entries base_index+1..index follow it
    data_bytes: int
    data_sha256: str
    node: str  #: the leader that served it
    created_at: float

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, **{f: getattr(self, f) for f in self.__slots__}}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupHeader:
        doc: Any = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else doc
            raise ValueError(f"unsupported header format {got!r}")
        return cls(
            cluster_id=str(doc["cluster_id"]),
            index=int(doc["index"]),
            term=int(doc["term"]),
            time_ms=int(doc["time_ms"]),
            base_index=int(doc["base_index"]),
            data_bytes=int(doc["data_bytes"]),
            data_sha256=str(doc["data_sha256"]),
            node=str(doc["node"]),
            created_at=float(doc["created_at"]),
        )


def stream_backup(header: BackupHeader, data: bytes) -> Iterator[bytes]:
    """The file's bytes in chunks of at most CHUNK_BYTES (what the node streams over HTTP)."""
    head = header.to_json()
    digest = hashlib.sha256()
    for part in (MAGIC, struct.pack(">I", len(head)), head):
        digest.update(part)
        yield part
    view = memoryview(data)
    for i in range(0, len(data), CHUNK_BYTES):
        chunk = bytes(view[i : i + CHUNK_BYTES])
        digest.update(chunk)
        yield chunk
    yield digest.digest()


def read_backup(path: Path) -> tuple[BackupHeader, bytes]:
    """Read and verify a backup file. Raises BackupError naming what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup file ({exc.strerror})") from exc
    redo = "take a new backup with `raftstate snapshot save`, or use an older good copy"
    fixed = len(MAGIC) + 4
    if len(raw) < fixed or not raw.startswith(MAGIC):
        raise BackupError(f"{path}: not a raftstate backup file (no {MAGIC[:-1].decode()} header); {redo}")
    (head_len,) = struct.unpack(">I", raw[len(MAGIC) : fixed])
    if head_len > MAX_HEADER_BYTES:
        raise BackupError(
            f"{path}: header length {head_len} exceeds {MAX_HEADER_BYTES} bytes: corrupted; {redo}"
        )
    if len(raw) < fixed + head_len + TRAILER_BYTES:
        raise BackupError(f"{path}: truncated at {len(raw)} bytes, inside the header; {redo}")
    try:
        header = BackupHeader.from_json(raw[fixed : fixed + head_len])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{path}: unreadable header ({exc}): corrupted; {redo}") from exc
    expected = fixed + head_len + header.data_bytes + TRAILER_BYTES
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise BackupError(f"{path}: {what}: {len(raw)} bytes, the header promises {expected}; {redo}")
    body, trailer = raw[:-TRAILER_BYTES], raw[-TRAILER_BYTES:]
    data = body[fixed + head_len :]
    if hashlib.sha256(data).hexdigest() != header.data_sha256:
        where = f"bytes {fixed + head_len}..{len(body)}"
        raise BackupError(f"{path}: checksum mismatch in the data section ({where}): corrupted; {redo}")
    if hashlib.sha256(body).digest() != trailer:
        raise BackupError(f"{path}: checksum mismatch in the file trailer: corrupted; {redo}")
    return header, data
