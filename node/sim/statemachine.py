"""A tiny deterministic state machine: a key -> value dict written by ``b"key=value"`` commands.

Besides the dict it keeps ``chain``, a CRC chained over every applied entry (index, term, kind,
data), so two replicas — or a snapshot and the committed log — can be compared in O(1).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import msgpack

from raftstate.raft import Entry, EntryKind


def chain_step(chain: int, e: Entry) -> int:
    head = b"%d/%d/%d/" % (e.index, e.term, int(e.kind))
    return zlib.crc32(e.data, zlib.crc32(head, chain))


def command(key: str, value: str) -> bytes:
    return f"{key}={value}".encode()


@dataclass(slots=True)
class KVStateMachine:
    applied_index: int = 0
    chain: int = 0
    #: cluster time of the last applied entry
    time_ms: int = 0
    kv: dict[str, str] = field(default_factory=dict)

    def apply(self, e: Entry) -> None:
        # the caller checks the order (invariants.apply_in_order) before calling
        self.applied_index = e.index
        self.chain = chain_step(self.chain, e)
        self.time_ms = e.time_ms
        if e.kind == EntryKind.NORMAL and e.data:
            k, _, v = e.data.decode().partition("=")
            self.kv[k] = v

    def read(self, key: str) -> tuple[int, str | None]:
        return self.applied_index, self.kv.get(key)

    def snapshot(self) -> bytes:
        out: bytes = msgpack.packb([self.applied_index, self.chain, self.time_ms, sorted(self.kv.items())])
        return out

    @classmethod
    def restore(cls, data: bytes) -> KVStateMachine:
        idx, chain, time_ms, items = msgpack.unpackb(data)
        return cls(int(idx), int(chain), int(time_ms), {str(k): str(v) for k, v in items})
