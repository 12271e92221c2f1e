"""RaftDriver: runs the pure Raft core on asyncio — ticks, Ready batches, proposals and reads.

Two tasks share the core's output, so that a slow disk never holds up a leader's heartbeats:

    ready loop      takes each Ready as soon as the core has one and sends, at once, the messages
                    that may leave before the fsync (a leader's appends and heartbeats; heartbeat
                    replies while no term or vote change awaits its fsync)
    persist worker  takes the queued Readys (up to the next one that installs a snapshot), persists
                    them under ONE fsync (group commit, in a thread), then for each in order:
                    installs a received snapshot, sends the remaining messages, applies committed
                    entries, answers reads, advances the core

The state machine's data lives in a store of its own (node/storage/state_file.py) when the node has
one: then a "snapshot" in the Raft sense is a point up to which the store is durable (a checkpoint),
the snapshot file holds only a small descriptor, a lagging follower receives a copy of the store
streamed in chunks (node/peers/snapshot_transfer.py), and entries at or below the store's applied
index are skipped on replay (etcd's consistent index). Without one (tests, tools), the state is
in memory and its snapshots are the canonical msgpack bytes.

Incoming peer messages, proposals and ticks only *step* the core and wake the ready loop.
Once started, blocking work (fsync, snapshot writes and reads) never runs on the event loop; the
constructor loads the data dir synchronously, before the node serves anything.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from raftstate.node.errors import Interrupted, Refusal
from raftstate.node.runtime.deadlines import Deadlines
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.tables import StateTables
from raftstate.node.storage.errors import StorageCorruption
from raftstate.node.storage.state_file import StateFile, StoreDescriptor
from raftstate.node.storage.store import LoadedState, Storage
from raftstate.raft import (
    ConfChange,
    Entry,
    EntryKind,
    HeartbeatResp,
    InstallSnapshot,
    Membership,
    Message,
    NotLeader,
    Outbound,
    RaftNode,
    RaftSettings,
    Ready,
    Role,
)

log = logging.getLogger("raftstate.node")

#: the persist worker yields to the event loop after this many applied entries (heartbeats go out)
#: entries kept behind a state store checkpoint for followers catching up (etcd keeps 5,000)
CATCH_UP_ENTRIES = 5000
#: (each entry costs tens of µs on the state store: a few ms between yields, at any store size)
APPLY_YIELD_EVERY = 256


class Transport(Protocol):
    def send(self, msg: Message) -> None: ...
    def update_peers(self, addresses: dict[str, str]) -> None: ...


class SnapshotSender(Protocol):
    """Streams a copy of the state store to a follower (node/peers/snapshot_transfer.py)."""

    async def send(self, address: str, msg: InstallSnapshot, path: Path) -> None: ...


class ProposalLost(Interrupted):
    """The entry we proposed was replaced by another leader's: it was certainly not applied."""


class OutcomeUnknown(Interrupted):
    """We stopped waiting before the outcome was known: the command may or may not be applied."""


class ReadAborted(Interrupted):
    """Leadership was lost before a linearizable read could be confirmed."""


@dataclass(slots=True)
class _Waiter:
    term: int
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class DriverSettings:
    tick_ms: int = 50
    snapshot_threshold: int = 10_000
    raft: RaftSettings = RaftSettings()


class RaftDriver:
    def __init__(
        self,
        node_id: str,
        *,
        bootstrap: Membership,
        storage: Storage,
        transport: Transport,
        settings: DriverSettings,
        state_machine: KVStateMachine | None = None,
        state_file: StateFile | None = None,
        snapshot_sender: SnapshotSender | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        on_fsync: Callable[[float], None] | None = None,
        on_snapshot: Callable[[float], None] | None = None,
        seed: int | None = None,
    ) -> None:
        """``state_file``: the store the state lives in (then ``snapshot_sender`` ships copies of it
        to followers); without one the state is in memory (``state_machine``, or a new one)."""
        self.id = node_id
        self.storage = storage
        self.transport = transport
        self.settings = settings
        self.state_file = state_file
        self.snapshot_sender = snapshot_sender
        if state_file is not None:
            assert state_machine is None, "the state machine of a state file is opened here"
            state_machine = KVStateMachine(StateTables(state_file.connect()))
        self.sm = state_machine or KVStateMachine()
        self.clock_ms = clock_ms
        self.on_fsync = on_fsync
        #: called with the seconds a snapshot took (a checkpoint, or installing a received state)
        self.on_snapshot = on_snapshot
        loaded = storage.load()
        if loaded.snapshot_data is not None and loaded.persisted.snapshot is not None:
            self._take_up_snapshot(loaded.persisted.snapshot.index, loaded.snapshot_data)
        if state_file is not None:
            self._check_store_within_log(loaded)
        self.raft = RaftNode(
            node_id,
            bootstrap=bootstrap,
            state=loaded.persisted,
            settings=settings.raft,
            rng=random.Random(seed),
            now_ms=clock_ms(),
        )
        self.snapshot_index = loaded.persisted.snapshot.index if loaded.persisted.snapshot else 0
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[Hashable, asyncio.Future[None]] = {}
        #: one timer for every pending proposal's and read's timeout (not a wait_for each)
        self._deadlines = Deadlines()
        self._read_seq = 0
        self._wake = asyncio.Event()
        #: Ready batches taken from the core, waiting for (or in) their fsync; handled in order
        self._pipeline: deque[Ready] = deque()
        self._pipeline_wake = asyncio.Event()
        #: queued or persisting Ready batches that change term/vote (or install a snapshot)
        self._term_changes_in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshotting = False
        #: held while entries are applied; the state store's WAL restart (_checkpoint) takes it so
        #: that no write transaction begins meanwhile
        self._apply_lock = asyncio.Lock()
        #: followers a copy of the store is being sent to (one transfer per follower at a time)
        self._sending_to: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.last_contact_ms: dict[str, int] = {}
        #: observers called with (role, term, leader) on every change
        self.role_listeners: list[Callable[[Role, int, str | None], None]] = []
        self.apply_listeners: list[Callable[[Entry], None]] = []
        #: called after each batch of applied entries is committed to the state (the watch hub
        #: takes the batch's events: node/api/watch.py)
        self.batch_listeners: list[Callable[[], None]] = []
        #: called once if persisting or applying fails, or a core invariant breaks (an assertion in
        #: step, tick or ready); the process must exit and recover from disk
        self.fatal_listeners: list[Callable[[BaseException], None]] = []
        self.fatal_error: BaseException | None = None
        self.addresses: dict[str, str] = dict(self.raft.membership.addresses)

    # ================================================================= lifecycle

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._ready_loop(), name=f"raft-ready-{self.id}"),
            asyncio.create_task(self._persist_worker(), name=f"raft-persist-{self.id}"),
            asyncio.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(OutcomeUnknown(f"node {self.id} is shutting down"))

    # ================================================================= inputs

    def step(self, msg: Message) -> None:
        """A message from a peer (called by the transport)."""
        if self._stopped:
            return
        self.last_contact_ms[msg.src] = self.clock_ms()
        try:
            self.raft.step(msg)
        except AssertionError as exc:  # a core invariant broke: never carry on past it
            self._fail(exc, f"broke a Raft invariant stepping {type(msg).__name__} from {msg.src}")
            raise
        self._wake.set()

    async def propose(self, command: bytes, timeout_s: float) -> Any:
        """Replicate ``command`` and return the state machine's result once applied here.

        Raises NotLeader or LeadershipTransferInProgress (nothing was appended: safe to retry
        elsewhere), CommandError (applied: the state machine refused the command), ProposalLost
        (certainly not applied), OutcomeUnknown (timed out, shutting down, or a snapshot replaced
        the log first: may or may not be applied)."""
        return await self._wait_applied(self.raft.propose(command, self.clock_ms()), timeout_s)

    async def propose_conf_change(self, cc: ConfChange, timeout_s: float) -> None:
        """Append a membership change and return once it is applied here (committed). Raises like
        :meth:`propose`, and ConfChangeInProgress (nothing appended) when another change is pending
        or this one is invalid."""
        await self._wait_applied(self.raft.propose_conf_change(cc, self.clock_ms()), timeout_s)

    async def _wait_applied(self, index: int, timeout_s: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stale = self._waiters.get(index)
        if stale is not None and not stale.future.done():
            # We lead again and reuse this index: the entry proposed there earlier was truncated.
            stale.future.set_exception(
                ProposalLost(f"the command at index {index} was replaced by a newer leader's entry")
            )
        waiter = self._waiters[index] = _Waiter(self.raft.term, fut)
        self._wake.set()
        self._deadlines.add(
            fut,
            timeout_s,
            lambda: OutcomeUnknown(
                f"no outcome for the command at index {index} within {timeout_s:.1f}s; it may still apply"
            ),
        )
        try:
            return await fut
        finally:
            self._deadlines.discard(fut)
            if not fut.done():
                fut.cancel()
            if self._waiters.get(index) is waiter:
                del self._waiters[index]

    async def read_barrier(self, timeout_s: float) -> None:
        """Return once local state reflects every write committed before this call (ReadIndex)."""
        self._read_seq += 1
        ctx = (self.id, self._read_seq)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            self.raft.read_index(ctx)
        except NotLeader:
            self._reads.pop(ctx, None)
            raise
        self._wake.set()
        self._deadlines.add(
            fut, timeout_s, lambda: TimeoutError(f"read not confirmed by a quorum within {timeout_s:.1f}s")
        )
        try:
            await fut
        finally:
            self._deadlines.discard(fut)
            self._reads.pop(ctx, None)

    async def transfer_leadership(self, target: str | None, timeout_s: float) -> str | None:
        """Hand leadership to ``target`` (default: the most caught-up voter). Returns the leader
        known at the end: the new one, None while unknown, or this node if the handover did not
        happen within ``timeout_s``."""
        if self.raft.role != Role.LEADER:
            return self.raft.leader
        if target is None:
            voters = [v for v in self.raft.membership.voters if v != self.id]
            if not voters:
                return self.id
            target = max(voters, key=lambda v: (self.raft.progress[v].match, v))
        self.raft.transfer_leadership(target)
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_leader():  # a call, not a comparison: mypy would narrow the role
                return self.raft.leader
            await asyncio.sleep(self.settings.tick_ms / 1000)
        return self.raft.leader

    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    # ================================================================= loops

    async def _ticker(self) -> None:
        interval = self.settings.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > 5 * interval:
                next_at = loop.time()  # we were paused (SIGSTOP, GC): don't fire a burst of ticks
            try:
                self.raft.tick(self.clock_ms())
            except Exception as exc:  # a core invariant broke; a dead ticker would hang the node
                self._fail(exc, "broke a Raft invariant on a tick")
                raise
            self._wake.set()

    async def _ready_loop(self) -> None:
        """Take Ready batches as soon as the core has them; send what may leave before the fsync
        at once (a leader's appends and heartbeats keep flowing while the disk is slow), and queue
        the rest for the persist worker, which keeps the batches in order."""
        try:
            await self._take_readys()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a core invariant broke (ready() checks every batch it makes)
            self._fail(exc, "broke a Raft invariant while taking a Ready")
            raise

    async def _take_readys(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.raft.has_ready():
                rd = self.raft.ready()
                if rd.hard_state is not None or rd.snapshot is not None:
                    self._term_changes_in_flight += 1
                later: list[Outbound] = []
                for out in rd.messages:
                    if self._may_send_early(out):
                        self._send(out.msg)
                    else:
                        later.append(out)
                if len(later) != len(rd.messages):
                    rd = replace(rd, messages=tuple(later))  # what is left waits for this batch's fsync
                self._pipeline.append(rd)
                self._pipeline_wake.set()

    def _may_send_early(self, out: Outbound) -> bool:
        """Messages the core allows out before the fsync, plus heartbeat replies while no term or
        vote change is waiting for its fsync: a reply says only "I follow you in term T", and T is
        already durable then. Without this, a follower's slow disk would hold its heartbeat replies
        behind unrelated log writes, and its leader would step down (CheckQuorum)."""
        if not out.after_persist:
            return True
        return isinstance(out.msg, HeartbeatResp) and self._term_changes_in_flight == 0

    async def _persist_worker(self) -> None:
        """Persist queued batches — every batch queued meanwhile under ONE fsync (group commit) —
        then, in order, send their remaining messages, apply, answer reads and advance the core."""
        try:
            while True:
                await self._pipeline_wake.wait()
                self._pipeline_wake.clear()
                while self._pipeline:
                    batch = self._take_batch()
                    await self._persist(batch)
                    async with self._apply_lock:  # a state store's WAL restart waits for it
                        for rd in batch:
                            await self._after_persist(rd)
                    # advance() just told the core what is durable here, and a leader counts its
                    # own fsync towards commit: entries may have committed without any input. Wake
                    # the ready loop to hand them out now, not at the next tick or message (a whole
                    # tick per write on a one-node cluster, or whenever our fsync is the last vote).
                    self._wake.set()
                    self._maybe_snapshot()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc, "cannot persist or apply")
            raise

    def _fail(self, exc: BaseException, what: str) -> None:
        """Stop serving, once: memory and disk may now disagree, or an invariant broke, so answer
        from neither. The listeners (the server) make the process exit; a restart recovers from disk."""
        if self.fatal_error is not None:
            return
        log.critical("node %s %s (%s): stopping", self.id, what, exc, exc_info=exc)
        self.fatal_error = exc
        self._stopped = True
        for cb in self.fatal_listeners:
            cb(exc)

    def _take_batch(self) -> list[Ready]:
        """Queued batches to persist together. A batch that installs a snapshot may only come
        first: the entries of earlier batches lie before the snapshot, and it replaces them."""
        batch = [self._pipeline.popleft()]
        while self._pipeline and self._pipeline[0].snapshot is None:
            batch.append(self._pipeline.popleft())
        return batch

    async def _persist(self, batch: list[Ready]) -> None:
        snapshot = next((rd.snapshot for rd in batch if rd.snapshot is not None), None)
        hard_state = None
        entries: list[Entry] = []
        for rd in batch:
            if rd.hard_state is not None:
                hard_state = rd.hard_state
            if rd.entries:
                first = rd.entries[0].index
                # A later batch may overwrite the tail of an earlier one (a truncation).
                while entries and entries[-1].index >= first:
                    entries.pop()
                entries.extend(rd.entries)
        if hard_state is None and not entries and snapshot is None:
            return
        if snapshot is not None and self.state_file is not None:
            snapshot = replace(snapshot, data=await self._install_store(snapshot.meta.index, snapshot.data))
        t0 = time.perf_counter()
        await asyncio.to_thread(self.storage.save, hard_state, entries, snapshot)
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t0)

    async def _after_persist(self, rd: Ready) -> None:
        """Install, send, apply, answer reads, advance — in that order, one Ready at a time (only
        the persist worker calls this). Yields to the loop every APPLY_YIELD_EVERY applied entries:
        a backlog (after a stall) applied in one pass would hold heartbeats for as long. Safe: later
        Readys (the ready loop may queue more meanwhile) are persisted and applied only after this
        one's advance(); reads are answered only after this Ready's entries are applied; and what
        runs meanwhile sees the state after a whole entry, as between any two Readys."""
        if rd.snapshot is not None:
            if self.state_file is None:
                self.sm.restore(rd.snapshot.data)
                log.info(
                    "node %s installed a snapshot at index %d from the leader",
                    self.id,
                    rd.snapshot.meta.index,
                )
            # else: the received store was installed (and logged) before the snapshot was saved
            self.snapshot_index = rd.snapshot.meta.index
            for index in [i for i in self._waiters if i <= rd.snapshot.meta.index]:
                self._resolve(index, None, unknown=True)
        if rd.hard_state is not None or rd.snapshot is not None:
            self._term_changes_in_flight -= 1
        for out in rd.messages:
            self._send(out.msg)
        for k, e in enumerate(rd.committed, 1):
            if self.state_file is not None and e.index <= self.sm.applied_index:
                # The store already holds this entry (it was durable before a restart, or came in
                # a received store that is ahead of the snapshot's index): applying it again would
                # apply it twice (etcd's consistent index). Only a store can be ahead of the core.
                continue
            # The core checked the run when it made the Ready; this is the other side of the pair.
            assert e.index == self.sm.applied_index + 1, (
                f"node {self.id}: committed entries are applied once each, in log order, with no gap: "
                f"entry {e.index} after applied {self.sm.applied_index}"
            )
            self._apply(e)
            if k % APPLY_YIELD_EVERY == 0:
                self._flush_batch()
                await asyncio.sleep(0)
        self._flush_batch()  # the applied index is committed with what it covers
        for rs in rd.reads:
            assert rs.index <= self.sm.applied_index, (
                f"node {self.id}: a linearizable read is answered only once its index is applied "
                f"(§6.4): read index {rs.index}, applied {self.sm.applied_index}"
            )
            fut = self._reads.get(rs.ctx)
            if fut is not None and not fut.done():
                fut.set_result(None)
        for ctx in rd.dropped_reads:
            fut = self._reads.get(ctx)
            if fut is not None and not fut.done():
                fut.set_exception(
                    ReadAborted(f"node {self.id} lost leadership before the read was confirmed")
                )
        if rd.membership is not None:
            self.addresses.update(dict(rd.membership.addresses))
            self.transport.update_peers(
                {n: a for n, a in self.addresses.items() if n in rd.membership.members and n != self.id}
            )
        if rd.soft_state is not None:
            s = rd.soft_state
            log.info(
                "node %s is %s in term %d (leader: %s)", self.id, s.role.value, s.term, s.leader or "none"
            )
            for cb in self.role_listeners:
                cb(s.role, s.term, s.leader)
        self.raft.advance(rd)

    def _flush_batch(self) -> None:
        self.sm.flush()
        for cb in self.batch_listeners:
            cb()

    async def store_maintenance(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` — a short, bounded write to the state store that is not apply (pruning the
        watch history) — between applies, under the apply lock (so never while the WAL restarts),
        and commit it."""
        async with self._apply_lock:
            fn()
            self.sm.flush()

    def _send(self, msg: Message) -> None:
        if isinstance(msg, InstallSnapshot):
            self._spawn(self._send_snapshot(msg))
        else:
            self.transport.send(msg)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._background.discard)

    async def _send_snapshot(self, msg: InstallSnapshot) -> None:
        if self.state_file is not None:
            await self._send_store(msg)
            return
        try:
            stored = await asyncio.to_thread(self.storage.snapshot_data)
        except Exception:
            log.exception("node %s cannot read its snapshot to send it to %s", self.id, msg.dst)
            return
        if stored is None or stored[0].index != msg.meta.index:
            log.info(
                "node %s: snapshot %d for %s was replaced before sending; the leader retries",
                self.id,
                msg.meta.index,
                msg.dst,
            )
            return
        log.info("node %s sends its snapshot at index %d to %s", self.id, msg.meta.index, msg.dst)
        self.transport.send(replace(msg, data=stored[1]))

    def _apply(self, e: Entry) -> None:
        if e.kind == EntryKind.NORMAL and e.data:
            result = self.sm.apply(e.index, e.time_ms, e.data)
        else:
            self.sm.advance_to(e.index, e.time_ms)
            result = None
        w = self._waiters.get(e.index)
        if w is not None and not w.future.done():
            if w.term == e.term:
                if isinstance(result, Refusal):
                    # A copy: the state machine may keep this outcome (sessions), and raising an
                    # exception object pins its traceback's frames to it.
                    w.future.set_exception(Refusal(result.code, result.message, **result.fields))
                else:
                    w.future.set_result(result)
            else:
                w.future.set_exception(
                    ProposalLost(f"the command at index {e.index} was replaced by a newer leader's entry")
                )
        for cb in self.apply_listeners:
            cb(e)

    def _resolve(self, index: int, result: Any, *, unknown: bool = False) -> None:
        w = self._waiters.get(index)
        if w is None or w.future.done():
            return
        if unknown:
            w.future.set_exception(OutcomeUnknown(f"a snapshot replaced the log up to index {index}"))
        else:
            w.future.set_result(result)

    def _fail_all(self, exc: Exception) -> None:
        for w in self._waiters.values():
            if not w.future.done():
                w.future.set_exception(exc)
        for f in self._reads.values():
            if not f.done():
                f.set_exception(ReadAborted(str(exc)))

    # ================================================================= snapshots

    def _maybe_snapshot(self) -> None:
        applied = self.sm.applied_index  # the core may have handed out entries not applied yet
        if applied < self.raft.log.snapshot_index:
            return  # a snapshot from the leader is queued for install: ours would be older
        if self._snapshotting or applied - self.snapshot_index < self._snapshot_every():
            return
        self._snapshotting = True
        if self.state_file is not None:
            self._spawn(self._checkpoint())
            return
        meta = self.raft.snapshot_meta(applied)
        # The state as of ``applied`` (cheap copies, on the loop); encoded in a thread.
        build = self.sm.snapshot_later()
        self._spawn(self._write_snapshot(meta.index, meta, build))

    def _catch_up_entries(self) -> int:
        """Entries kept in memory behind the last checkpoint, so that a follower that far behind
        catches up from the log (compact() ignores an index at or below the current base)."""
        return min(self.settings.snapshot_threshold, CATCH_UP_ENTRIES)

    def _snapshot_every(self) -> int:
        if self.state_file is not None:
            return self.settings.snapshot_threshold  # a checkpoint costs the writes since the last
        # An in-memory snapshot costs time proportional to the state: waiting for at least a
        # quarter of the key count between snapshots keeps the cost per write bounded.
        return max(self.settings.snapshot_threshold, len(self.sm.keys) // 4)

    def _take_up_snapshot(self, index: int, data: bytes) -> None:
        """At start: the stored snapshot (at ``index``) and the state agree, or the node refuses."""
        desc = StoreDescriptor.decode(data)
        if self.state_file is None:
            if desc is not None:
                raise RuntimeError(f"the snapshot at {index} describes a state store, and this node has none")
            self.sm.restore(data)
            return
        if desc is None:
            # A whole state (a node from before the store, or a restored backup): import it once.
            if self.sm.applied_index < index:
                self.sm.restore(data)
                log.info("node %s imported the state of the snapshot at %d into its store", self.id, index)
            return
        if self.sm.applied_index < index:
            raise StorageCorruption(
                self.state_file.path,
                f"the state store is at applied index {self.sm.applied_index}, behind the snapshot at "
                f"{index}: the log before {index} is gone, so the state cannot be rebuilt here",
            )

    def _check_store_within_log(self, loaded: LoadedState) -> None:
        """The store applies only entries this node had persisted, so its applied index is never
        beyond the log's last entry — except after installing a copy of the leader's store, which
        records the index it came at. Beyond both, the log lost entries the store applied (storage
        that acknowledged before fsync): replaying would skip the new entries written there."""
        assert self.state_file is not None
        p = loaded.persisted
        last = p.entries[-1].index if p.entries else (p.snapshot.index if p.snapshot else 0)
        desc = StoreDescriptor.decode(loaded.snapshot_data) if loaded.snapshot_data is not None else None
        installed = int(self.sm.tables.meta("installed_index") or 0)
        floor = max(last, desc.applied_index if desc is not None else 0, installed)
        if self.sm.applied_index > floor:
            raise StorageCorruption(
                self.state_file.path,
                f"the state store has applied index {self.sm.applied_index}, beyond the log's last entry "
                f"{last}: the log lost entries this node had applied (a disk or storage layer that "
                "acknowledged writes before they were durable?); the state cannot be trusted here",
            )

    async def _checkpoint(self) -> None:
        """Make the store durable, then let the log go up to the index it now covers."""
        assert self.state_file is not None
        try:
            t0 = time.perf_counter()
            durable = await asyncio.to_thread(self.state_file.checkpoint)
            async with self._apply_lock:  # the little written since, then the WAL starts over
                await asyncio.to_thread(self.state_file.restart_wal)
            if durable is None:
                return
            index = min(durable, self.raft.applied_index)
            if index <= max(self.snapshot_index, self.raft.log.snapshot_index):
                return
            meta = self.raft.snapshot_meta(index)
            await asyncio.to_thread(self.storage.save_snapshot, meta, StoreDescriptor(index).encode())
            # Keep a tail of entries in memory (etcd's SnapshotCatchUpEntries): a follower a little
            # behind catches up from the log. Compacting right up to the durable point sent such
            # a follower copy after copy of the whole store, each outrun by the next compaction
            # (341 copies of up to 157 MB in an 11-minute 1M-key load, measured by the chaos run).
            self.raft.compact(index - self._catch_up_entries())
            self.snapshot_index = max(self.snapshot_index, index)
            if self.on_snapshot is not None:
                self.on_snapshot(time.perf_counter() - t0)
            log.info(
                "node %s: its state store is durable at index %d (checkpoint and snapshot %.0f ms)",
                self.id,
                index,
                (time.perf_counter() - t0) * 1000,
            )
        except Exception:
            log.exception("node %s failed to checkpoint its state store; will retry", self.id)
        finally:
            self._snapshotting = False

    async def _send_store(self, msg: InstallSnapshot) -> None:
        """A follower needs the whole state: send it a consistent copy of the store, in chunks on a
        connection of its own (heartbeats never wait behind it). The copy may be newer than the
        snapshot's index; the follower then skips the entries the copy already holds."""
        assert self.state_file is not None
        address = self.addresses.get(msg.dst)
        if msg.dst in self._sending_to or address is None or self.snapshot_sender is None:
            return
        self._sending_to.add(msg.dst)
        copy: Path | None = None
        try:
            t0 = time.perf_counter()
            made, index = await asyncio.to_thread(self.state_file.copy_to, self.state_file.directory)
            copy = made
            size = made.stat().st_size
            log.info("node %s sends its state (index %d, %d bytes) to %s", self.id, index, size, msg.dst)
            await self.snapshot_sender.send(address, replace(msg, data=StoreDescriptor(index).encode()), made)
            log.info(
                "node %s sent its state at index %d to %s in %.1f s",
                self.id,
                index,
                msg.dst,
                time.perf_counter() - t0,
            )
        except Exception as exc:
            log.warning(
                "node %s could not send its state to %s (%s); the leader retries", self.id, msg.dst, exc
            )
        finally:
            self._sending_to.discard(msg.dst)
            if copy is not None:
                copy.unlink(missing_ok=True)

    def receive_store(self, msg: InstallSnapshot, path: Path) -> None:
        """A copy of the leader's store arrived (complete, checksummed, fsynced) at ``path``, which
        is now ours: hand the snapshot to the core; it is installed if the core still wants it."""
        desc = StoreDescriptor.decode(msg.data)
        if self._stopped or desc is None or self.state_file is None:
            log.warning("node %s: a state copy from %s cannot be used here; dropped", self.id, msg.src)
            path.unlink(missing_ok=True)
            return
        self.step(replace(msg, data=replace(desc, file=str(path)).encode()))

    async def _install_store(self, index: int, data: bytes) -> bytes:
        """Install a received copy of the store (the snapshot at ``index`` points at it) before the
        snapshot is saved and the log discarded: a crash in between leaves the new store with the
        old log, whose entries the store's applied index then skips. Returns what to save."""
        assert self.state_file is not None
        desc = StoreDescriptor.decode(data)
        if desc is None or desc.file is None:
            raise RuntimeError(f"the snapshot at {index} carries no state store copy to install")
        path = Path(desc.file)
        t0 = time.perf_counter()
        copy_index = await asyncio.to_thread(self.state_file.check_copy, path)
        if copy_index < index:
            raise StorageCorruption(
                path, f"the state copy is at index {copy_index}, before its snapshot's {index}"
            )
        await asyncio.to_thread(self.state_file.checkpoint)  # so that closing copies nothing on the loop
        # One step on the loop, no await: no read ever sees a closed store.
        self.sm.tables.close()
        self.state_file.replace_with(path)
        self.sm.reopen(StateTables(self.state_file.connect()))
        self.sm.tables.begin()
        self.sm.tables.set_meta("installed_index", copy_index)  # may lie beyond our log: see above
        self.sm.flush()
        await asyncio.to_thread(self.state_file.sync_dir)
        if self.on_snapshot is not None:
            self.on_snapshot(time.perf_counter() - t0)
        log.info(
            "node %s installed a snapshot at index %d from the leader: its state store, at index %d",
            self.id,
            index,
            copy_index,
        )
        return StoreDescriptor(copy_index).encode()

    async def _write_snapshot(self, index: int, meta: Any, build: Callable[[], bytes]) -> None:
        try:
            t0 = time.perf_counter()
            data = await asyncio.to_thread(build)
            await asyncio.to_thread(self.storage.save_snapshot, meta, data)
            self.raft.compact(index)
            self.snapshot_index = index
            log.info(
                "node %s took a snapshot at index %d (%d bytes, %.0f ms)",
                self.id,
                index,
                len(data),
                (time.perf_counter() - t0) * 1000,
            )
        except Exception:
            log.exception("node %s failed to write a snapshot at index %d; will retry", self.id, index)
        finally:
            self._snapshotting = False

    def pinned_state(self) -> KVStateMachine:
        """The state as of now, for reading all of it in a worker thread while applies go on (a
        digest, a backup): with a store, a read transaction on a connection of its own — close
        ``.tables.conn`` when done; in memory, a copy."""
        if self.state_file is None:
            copy = KVStateMachine()
            copy.restore(self.sm.snapshot())
            return copy
        self.sm.flush()  # what is applied is committed: the pinned view sees all of it
        tables = StateTables(*self.state_file.reader())
        tables.conn.execute("BEGIN")
        tables.conn.execute("SELECT count(*) FROM meta").fetchone()  # the read snapshot starts here
        return KVStateMachine(tables)

    # ================================================================= status

    def status(self) -> dict[str, Any]:
        r = self.raft
        m = r.membership
        now = self.clock_ms()
        role = r.role.value
        return {
            "id": self.id,
            "role": "candidate" if r.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) else role,
            "term": r.term,
            "leader": r.leader,
            "leader_address": self.addresses.get(r.leader) if r.leader else None,
            "commit_index": r.commit_index,
            "applied_index": r.applied_index,
            "last_index": r.last_index,
            "snapshot_index": self.snapshot_index,
            # the last entry the core's log no longer holds: a follower behind it needs a snapshot
            "compacted_index": r.log.snapshot_index,
            "members": {"voters": sorted(m.voters), "learners": sorted(m.learners)},
            "last_contact_ms_ago": {p: now - t for p, t in sorted(self.last_contact_ms.items())},
            "progress": {
                p: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                for p, pr in sorted(r.progress.items())
            },
        }
