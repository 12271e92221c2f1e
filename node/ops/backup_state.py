"""What a backup carries, and the state it stands for.

A backup's data section is the leader's newest stored snapshot (at index ``S``, as stored: never
decoded on the leader) plus the committed log entries ``S+1..I``, where ``I`` is the applied index
right after the ReadIndex barrier::

    msgpack {"base_index": S, "snapshot": bytes | None, "entries": [[index, term, time_ms, kind, data], ...]}

Why not the state itself: decoding or copying a large state in the node costs the event loop
(msgpack holds the GIL: ~0.8 s to decode 200k keys), and a leader that stops heartbeating loses
its followers. Reading a file and packing a few thousand entries costs nothing. The state machine
is deterministic, so :func:`rebuild_state` — run by ``inspect`` and ``restore``, offline — gets
exactly the leader's state at ``I``.

On the leader (:func:`backup_payload`, in a thread): the in-memory log starts at or before the
stored snapshot (the driver compacts memory only after the snapshot is stored); should a snapshot
beyond ``I`` have been stored meanwhile, :class:`SnapshotMovedOn` asks the caller for a new point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from raftstate.node.errors import Interrupted
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.storage.store import Storage
from raftstate.raft import Entry, EntryKind

__all__ = ["SnapshotMovedOn", "backup_payload", "decode_payload", "rebuild_state"]


class SnapshotMovedOn(Interrupted):
    """The stored snapshot is already past the index we want, or entries are missing: take a new point."""


def _covered(base_index: int, entries: Sequence[Entry], index: int) -> list[Entry]:
    """The entries base_index+1..index, checked to be all there."""
    if base_index > index:
        raise SnapshotMovedOn(f"a snapshot at {base_index} replaced the log beyond {index}")
    needed = [e for e in entries if e.index > base_index]
    first = needed[0].index if needed else index + 1
    if first != base_index + 1 or (needed and needed[-1].index != index):
        raise SnapshotMovedOn(
            f"entries {base_index + 1}..{index} are neither in the log nor the snapshot "
            f"(have {first}..{needed[-1].index if needed else first - 1})"
        )
    return needed


def backup_payload(storage: Storage, entries: Sequence[Entry], index: int) -> tuple[bytes, int, int]:
    """The data section for the state at ``index``, its cluster time and the snapshot's index
    (runs in a thread).

    ``entries``: the log's entries after its in-memory snapshot, up to ``index``."""
    stored = storage.snapshot_data()
    base_index, snapshot, time_ms = 0, None, 0
    if stored is not None:
        base_index, snapshot, time_ms = stored[0].index, stored[1], stored[0].time_ms
    needed = _covered(base_index, entries, index)
    if needed:
        time_ms = needed[-1].time_ms
    body = {
        "base_index": base_index,
        "snapshot": snapshot,
        "entries": [[e.index, e.term, e.time_ms, int(e.kind), e.data] for e in needed],
    }
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data, time_ms, base_index


def pinned_payload(pinned: KVStateMachine) -> tuple[bytes, int, int]:
    """The data section for a node whose state lives in a store: the whole state at the pinned
    view's applied index, as a snapshot, with no entries (runs in a thread; closes the view)."""
    try:
        body = {"base_index": pinned.applied_index, "snapshot": pinned.snapshot(), "entries": []}
    finally:
        pinned.tables.close()
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data, pinned.time_ms, pinned.applied_index


def decode_payload(data: bytes) -> tuple[int, bytes | None, list[Entry]]:
    """(base index, snapshot bytes, entries) of a data section. Raises ValueError/KeyError/TypeError."""
    body: Any = msgpack.unpackb(data, raw=False)
    entries = [Entry(int(i), int(t), int(ms), EntryKind(k), bytes(d)) for i, t, ms, k, d in body["entries"]]
    snapshot = body["snapshot"]
    return int(body["base_index"]), (bytes(snapshot) if snapshot is not None else None), entries


def rebuild_state(
    base_index: int, snapshot: bytes | None, entries: Sequence[Entry], index: int
) -> KVStateMachine:
    """The state after applying everything up to ``index``: the snapshot, then the entries."""
    sm = KVStateMachine()
    if snapshot is not None:
        sm.restore(snapshot)
        if sm.applied_index != base_index:
            raise ValueError(f"the snapshot is at index {sm.applied_index}, not {base_index}")
    for e in _covered(base_index, entries, index):
        if e.kind == EntryKind.NORMAL and e.data:
            sm.apply(e.index, e.time_ms, e.data)
        else:
            sm.advance_to(e.index, e.time_ms)
    return sm
