"""The state machine's state at one applied index, rebuilt OFF the event loop for a backup.

Copying a large live state on the loop would stall heartbeats (about 140 ms per 100k keys), so a
backup does not copy it. It takes, on the loop and without awaiting, only the index ``I`` it must
reach and the committed entries the in-memory log holds after its snapshot (references to
immutable entries: cheap). Then, in a thread, it loads the node's newest stored snapshot ``S``
(``S`` >= the in-memory log's start, since the driver compacts memory only after the snapshot is
stored) and applies entries ``S+1..I`` to a private state machine. The state machine is
deterministic, so that is exactly the leader's state at ``I``. Should a newer snapshot have been
stored beyond ``I`` meanwhile, the caller takes a new point and tries again.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftstate.node.state_machine import KVStateMachine
from raftstate.node.storage import Storage
from raftstate.raft import Entry, EntryKind

__all__ = ["SnapshotMovedOn", "rebuild_state"]


class SnapshotMovedOn(Exception):
    """The stored snapshot is already past the index we want: take a new point."""


def rebuild_state(storage: Storage, entries: Sequence[Entry], index: int) -> KVStateMachine:
    """The state after applying everything up to ``index`` (runs in a thread).

    ``entries``: the log's entries after its snapshot, up to ``index``, in order."""
    sm = KVStateMachine()
    stored = storage.snapshot_data()
    start = 0
    if stored is not None:
        meta, data = stored
        if meta.index > index:
            raise SnapshotMovedOn(f"a snapshot at {meta.index} replaced the log beyond {index}")
        sm.restore(data)
        start = meta.index
    first = entries[0].index if entries else index + 1
    if first > start + 1:
        raise SnapshotMovedOn(f"entries {start + 1}..{first - 1} are neither in the log nor the snapshot")
    for e in entries:
        if e.index <= start:
            continue
        if e.kind == EntryKind.NORMAL and e.data:
            sm.apply(e.index, e.time_ms, e.data)
        else:
            sm.advance_to(e.index, e.time_ms)
    assert sm.applied_index == index, (sm.applied_index, index)
    return sm
