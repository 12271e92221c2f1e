"""The Ready driver of the in-memory harnesses: the contract of raft/ready.py, written once.

Who uses it: the seeded simulator (node/sim: one per SimNode incarnation; when an fsync completes,
how many batches it covers and when a node crashes are the simulator's to decide) and
tests/raftnet.py (one per Peer; ``Net.hold``/``Net.release`` keep its Readys waiting behind a slow
fsync). The production driver is node/driver.py (asyncio, threads, the node's Storage); the farm in
tests/driverfarm.py tests that one, not this.

For each Ready the harness takes (:meth:`ReadyDriver.take`):

1. if nothing taken earlier is still in flight and the harness says the batch may persist *now*,
   the Ready is finished at once: persist, send every message, apply, ``advance``;
2. otherwise it becomes an :class:`InFlight` at the end of :attr:`ReadyDriver.queue`: messages
   that may leave before the fsync (``after_persist=False``) go out at once, the rest wait with it.

:meth:`ReadyDriver.finish` completes the oldest in-flight Readys, strictly in the order taken:
the batch reaches the disk (:meth:`MemDisk.sync <raftstate.raft.testing.disk.MemDisk.sync>`), the
held messages leave, the harness applies the Ready (installs its snapshot, applies ``committed``,
answers ``reads``), then ``advance``. :meth:`ReadyDriver.crash` is power loss: everything in flight
is lost, except — torn writes — a prefix of the batches the disk had been given.

Every InstallSnapshot leaves with the bytes of the snapshot its metadata names, read from the disk.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from raftstate.raft import InstallSnapshot, Message, RaftNode, Ready
from raftstate.raft.testing.disk import DiskContractError, MemDisk, WriteBatch, torn_prefix


@dataclass(slots=True)
class InFlight:
    """A Ready whose persist step waits for its fsync."""

    ready: Ready
    batch: WriteBatch
    #: messages that may only leave after the fsync
    held: list[Message]


class ReadyDriver:
    """Carries one core's Readys through persist → send → apply → advance, over a :class:`MemDisk`.

    ``send`` gets each message ready for the wire; ``apply`` is the application's step 3 for one
    Ready; ``persisted`` (optional) observes every batch that reached the disk; ``emitted``
    (optional) observes every message exactly as the core emitted it. With ``pipeline=False`` the
    harness takes the next Ready only once the previous one is finished.
    """

    def __init__(
        self,
        core: RaftNode,
        disk: MemDisk,
        *,
        send: Callable[[Message], None],
        apply: Callable[[Ready], None],
        persisted: Callable[[WriteBatch], None] | None = None,
        emitted: Callable[[Message], None] | None = None,
        pipeline: bool = True,
    ) -> None:
        self.core = core
        self.disk = disk
        self.send = send
        self.apply = apply
        self.persisted = persisted
        self.emitted = emitted
        self.pipeline = pipeline
        #: Readys taken but not finished, in the order taken
        self.queue: deque[InFlight] = deque()

    def wants_ready(self) -> bool:
        """Whether the harness should take a Ready now."""
        return self.core.has_ready() and (self.pipeline or not self.queue)

    def take(self, rd: Ready, persist_now: Callable[[WriteBatch], bool]) -> bool:
        """Handle a Ready just taken from the core; True if it was queued behind an fsync.

        ``persist_now`` is asked only when nothing earlier is in flight (with batches ahead of it,
        even a batch with nothing to persist waits its turn)."""
        batch = WriteBatch.of(rd)
        if not self.queue and persist_now(batch):
            self._finish(InFlight(rd, batch, [o.msg for o in rd.messages]))
            return False
        held = []
        for out in rd.messages:
            if out.after_persist:
                held.append(out.msg)
            else:
                self._send(out.msg)
        self.queue.append(InFlight(rd, batch, held))
        return True

    def finish(self, count: int | None = None) -> None:
        """The fsync of the oldest ``count`` in-flight Readys (all by default) completed: finish them."""
        for _ in range(len(self.queue) if count is None else count):
            self._finish(self.queue.popleft())

    def unsynced_ops(self, written: int) -> int:
        """Write operations in the oldest ``written`` in-flight batches (see :meth:`crash`)."""
        return sum(fl.batch.ops() for fl in list(self.queue)[:written])

    def crash(self, *, written: int = 0, keep_ops: int = 0) -> None:
        """Power loss. The oldest ``written`` in-flight batches had been handed to the disk but not
        synced: their first ``keep_ops`` write operations survive (torn writes). The rest is lost."""
        for batch in torn_prefix([fl.batch for fl in list(self.queue)[:written]], keep_ops):
            self._persist(batch)
        self.queue.clear()

    # ----------------------------------------------------------------- steps

    def _persist(self, batch: WriteBatch) -> None:
        self.disk.sync(batch)
        if self.persisted is not None:
            self.persisted(batch)

    def _send(self, msg: Message) -> None:
        if self.emitted is not None:
            self.emitted(msg)
        if isinstance(msg, InstallSnapshot):
            data = self.disk.snapshot_data(msg.meta.index)
            if data is None:
                raise DiskContractError(
                    f"{self.core.id} sends a snapshot at {msg.meta.index} it never stored",
                    rule="snapshot_contract",
                )
            msg = dataclasses.replace(msg, data=data)
        self.send(msg)

    def _finish(self, fl: InFlight) -> None:
        if not fl.batch.empty():
            self._persist(fl.batch)
        for msg in fl.held:
            self._send(msg)
        self.apply(fl.ready)
        self.core.advance(fl.ready)
