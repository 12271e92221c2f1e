"""TEST-ONLY deliberate bugs, so a chaos run can prove its checkers catch them. Never in production.

``RAFTSTATE_INJECT_BUG=<name>`` in a node's environment turns one bug on for that process (logged
at ERROR level at start-up); ``scripts/chaos.py --inject-bug NAME`` sets it on every node.

================  ===========================================================================
name              what the node then does wrong
================  ===========================================================================
stale-reads       a linearizable read is answered at once from the local state of whichever
                  node gets it, without ReadIndex (as if it were ``consistency=stale``): a deposed
                  or cut-off leader, or a lagging follower a client still takes for the leader,
                  serves old values
ack-before-fsync  every Ready batch counts as durable at once (the driver acknowledges, votes and
                  commits on it); a background thread writes it ~1 s later. A crash of every node
                  within that second (restart-all) loses acknowledged writes
================  ===========================================================================
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from raftstate.node.storage.store import LoadedState, Storage
from raftstate.raft.messages import Entry, HardState, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall

__all__ = ["ACK_BEFORE_FSYNC", "BUGS", "BUG_ENV", "STALE_READS", "LateWriteStorage", "injected_bug"]

log = logging.getLogger("raftstate.node")

BUG_ENV: Final = "RAFTSTATE_INJECT_BUG"
STALE_READS: Final = "stale-reads"
ACK_BEFORE_FSYNC: Final = "ack-before-fsync"
BUGS: Final = (STALE_READS, ACK_BEFORE_FSYNC)


def injected_bug() -> str | None:
    """The bug named by the environment, or None. An unknown name stops start-up (ValueError)."""
    name = os.environ.get(BUG_ENV, "").strip()
    if not name:
        return None
    if name not in BUGS:
        raise ValueError(f"{BUG_ENV}={name!r} is not a known injected bug; choose one of {', '.join(BUGS)}")
    log.error("!!! TEST-ONLY BUG INJECTED (%s=%s): this node is deliberately broken !!!", BUG_ENV, name)
    return name


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
