"""TEST-ONLY: the ``ack-before-fsync`` injected bug — a Storage that says "durable" before writing.

Never in production: only ``TestHooks.storage`` (node/test_hooks.py) wraps the node's storage in it,
when that bug is injected, so a chaos run can prove its durability checker catches acknowledged
writes lost by a crash of every node.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from raftstate.node.storage.store import LoadedState, Storage
from raftstate.raft.messages import Entry, HardState, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall

__all__ = ["LateWriteStorage"]

log = logging.getLogger("raftstate.node")


class LateWriteStorage:
    """The ``ack-before-fsync`` bug: a Storage whose ``save`` returns before anything is written.

    Every save (and local snapshot) is queued and performed, in order, by one thread ``delay_s``
    after it was requested. Reading the snapshot first waits for the queue, so what is sent is
    what the core believes is stored; ``close`` (a clean stop) drains it too.
    """

    def __init__(self, inner: Storage, delay_s: float = 1.0) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._queue: queue.Queue[tuple[float, Callable[[], None]]] = queue.Queue()
        self._progress = threading.Condition()
        self._queued = 0  # writes handed to the thread so far
        self._written = 0  # of those, performed (invariant: _written <= _queued)
        self._thread = threading.Thread(target=self._write_late, name="late-writer", daemon=True)
        self._thread.start()

    def load(self) -> LoadedState:
        return self._inner.load()

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotToInstall | None,
    ) -> None:
        batch = list(entries)
        self._later(lambda: self._inner.save(hard_state, batch, snapshot))

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._later(lambda: self._inner.save_snapshot(meta, data))

    def snapshot_data(self) -> tuple[SnapshotMeta, bytes] | None:
        self._drain()
        return self._inner.snapshot_data()

    def close(self) -> None:
        self._drain()
        self._inner.close()

    def _drain(self) -> None:
        """Wait for every write queued so far (not for later ones: a busy node never idles)."""
        with self._progress:
            target = self._queued
            self._progress.wait_for(lambda: self._written >= target)

    def _later(self, write: Callable[[], None]) -> None:
        with self._progress:
            self._queued += 1
            self._queue.put((time.monotonic() + self._delay_s, write))

    def _write_late(self) -> None:
        while True:
            due, write = self._queue.get()
            try:
                time.sleep(max(0.0, due - time.monotonic()))
                write()
            except Exception:
                log.exception("late writer: a delayed write failed; stopping the process")
                os._exit(4)
            with self._progress:
                self._written += 1
                self._progress.notify_all()
