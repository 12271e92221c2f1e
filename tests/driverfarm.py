"""A farm of real :class:`RaftDriver` instances in one asyncio loop, with seeded faults.

The seeded simulator in node/sim/ checks the pure core under the test kit's Ready driver; this farm
checks the *real* driver's asyncio pipeline (ready loop, persist worker, group commit, background
snapshot writes and sends) with the real core and the real state machine:

    clients ──propose / read_barrier──▶ RaftDriver ×N ──send──▶ Network ──call_later──▶ step()
                                          │ asyncio.to_thread
                                          ▼
                                        DiskView (a MemoryStorage that takes 0–30 ms per call)

Faults, all drawn from ``random.Random(seed)``: message delay, loss, duplication, reordering (or
per-link FIFO, like the real transport), partitions that heal (symmetric, one-way, isolating the
leader), slow-disk episodes, skewed and jumping wall clocks, leadership transfers, and crashes:
the node's storage view is fenced (whatever ``save`` had not finished is lost, as on power loss),
its driver is stopped, and later a new driver is built from the same storage. Time is real (ticks
of ~10 ms), and the thread pool makes interleavings vary from run to run, so a replay with the
same seed is best-effort: it draws the same fault schedule but not necessarily the same
interleaving.

What it shares with the other harnesses (raft/testing/): the partitions (the kit's
:class:`Partition` builders, as the simulator's and raftnet's). Not the disk or the Ready driver:
the point here is the real driver over the node's own ``Storage`` protocol, so each node's disk is
the node's ``MemoryStorage`` (the twin of ``DiskStorage``) behind a slow, fenceable
:class:`DiskView`.

Checks (a violation is recorded with the time and node; the run stops early and raises
:class:`FarmFailure` with the seed, a replay command and the tail of the event trace):

* no driver reports a fatal error, and none of its tasks dies;
* every message leaves only once what it claims is durable: its term (except pre-votes), the vote
  a granted vote reply or a vote request stands for, the entries an append reply acknowledges, the
  snapshot an install reply acknowledges; an InstallSnapshot carries the snapshot's bytes;
* state machine safety: no two nodes apply different entries at one index; each incarnation
  applies consecutive indexes, jumping forward only to an installed snapshot's index;
* snapshots at one index are byte-identical everywhere (local ones, stored ones, restored ones),
  and restoring a snapshot reproduces its bytes;
* error contract: a command refused with NotLeader or ProposalLost is never applied; an
  acknowledged command sits at the index its result names;
* linearizable reads never return a version older than a write acknowledged before they began,
  and return the value that write at that version set;
* liveness after heal (generous bound): a leader commits a marker write, every node applies it and
  all state machines are byte-identical, holding every acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from raftstate.node.driver import (
    DriverSettings,
    OutcomeUnknown,
    ProposalLost,
    RaftDriver,
    ReadAborted,
)
from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.storage.store import LoadedState, MemoryStorage
from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    LeadershipTransferInProgress,
    Membership,
    Message,
    NotLeader,
    RaftSettings,
    RequestVote,
    RequestVoteResp,
    SnapshotMeta,
    decode_message,
    encode_message,
)
from raftstate.raft.ready import SnapshotToInstall
from raftstate.raft.testing import Partition, isolate, one_way, symmetric

REPLAY = (
    "RAFTSTATE_DRIVER_SEED={seed} RAFTSTATE_DRIVER_CHAOS_S={chaos_s} "
    ".venv/bin/pytest tests/test_driver_random.py -k faults"
)


class FarmFailure(AssertionError):
    """A farm run broke an invariant (the message names the seed and how to replay it)."""


class NodeCrashed(Exception):
    """Raised by a fenced storage view: the process that owned it has crashed."""


# ============================================================================ configuration


@dataclass(frozen=True, slots=True)
class FarmConfig:
    nodes: int = 3
    #: how long clients and faults run before the heal and liveness phase
    chaos_s: float = 1.2
    tick_ms: int = 10
    election_ticks: int = 10
    snapshot_threshold: int = 20
    max_entries_per_msg: int = 16
    max_inflight_msgs: int = 8
    delay_max_ms: float = 20.0
    loss: float = 0.02
    dup: float = 0.02
    #: per-link FIFO delivery (like the real TCP transport) instead of free reordering
    fifo: bool = False
    #: each storage call sleeps uniform(0, disk_max_ms), sometimes 3x that (a slow fsync)
    disk_max_ms: float = 30.0
    clients: int = 4
    keys: int = 6
    read_ratio: float = 0.3
    request_timeout_s: float = 0.5
    #: the last node's disk is this many times slower, all run long: a lagging follower whose
    #: queued appends meet the leader's compaction (snapshot Readies queue behind append Readies)
    laggard_factor: float = 1.0
    #: each node's wall clock is off by up to this much, and jumps now and then
    clock_skew_ms: float = 2_000.0
    #: mean pause between two fault actions
    fault_every_s: float = 0.08
    #: the liveness bound after heal
    settle_s: float = 15.0

    @classmethod
    def for_seed(cls, seed: int, *, nodes: int, chaos_s: float) -> FarmConfig:
        """A configuration drawn from the seed, so that seeds differ in more than timing.

        One seed in three is a "laggard" run: a follower with a slow disk, a leader compacting every
        few entries and a small replication window, so snapshots constantly overtake appends."""
        rng = random.Random(f"config-{seed}")
        if seed % 3 == 1:
            return cls(
                nodes=nodes,
                chaos_s=chaos_s,
                snapshot_threshold=rng.choice([4, 8]),
                max_entries_per_msg=rng.choice([1, 2]),
                max_inflight_msgs=rng.choice([2, 4]),
                delay_max_ms=rng.choice([5.0, 20.0]),
                loss=rng.choice([0.0, 0.02]),
                dup=rng.choice([0.0, 0.02]),
                fifo=rng.random() < 0.5,
                disk_max_ms=5.0,
                laggard_factor=rng.choice([6.0, 10.0]),
                clients=16,
                fault_every_s=rng.choice([0.25, 0.5]),
            )
        return cls(
            nodes=nodes,
            chaos_s=chaos_s,
            snapshot_threshold=rng.choice([4, 8, 20, 40]),
            max_entries_per_msg=rng.choice([1, 2, 16, 64]),
            max_inflight_msgs=rng.choice([1, 2, 8, 64]),
            delay_max_ms=rng.choice([5.0, 20.0, 20.0]),
            loss=rng.choice([0.0, 0.02, 0.1]),
            dup=rng.choice([0.0, 0.02, 0.1]),
            fifo=rng.random() < 0.5,
            disk_max_ms=rng.choice([5.0, 15.0, 30.0]),
            clients=rng.choice([3, 8, 16]),
            fault_every_s=rng.choice([0.04, 0.1, 0.25]),
        )


#: what the nemesis does at each step, with relative weights
FAULTS: dict[str, int] = {
    "crash": 3,  # power loss; the node restarts from its disk a little later
    "partition": 2,  # a random symmetric split, healed later
    "isolate_leader": 1,
    "one_way": 1,  # one directed link cut
    "transfer": 3,  # leadership transfer, to a random voter or the best one
    "slow_disk": 2,  # one node's disk 4-10x slower for a while
    "clock": 1,  # one node's wall clock jumps (entries are stamped by the leader's clock)
    "nothing": 2,
}


# ============================================================================ trace


class Trace:
    """The recent events of a run (thread-safe enough: deque.append is atomic)."""

    def __init__(self, maxlen: int = 600) -> None:
        self.t0 = time.monotonic()
        self.events: deque[str] = deque(maxlen=maxlen)

    def now_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000

    def add(self, who: str, what: str) -> None:
        self.events.append(f"{self.now_ms():8.1f}ms {who:>4}  {what}")

    def tail(self, n: int = 120) -> str:
        return "\n".join(list(self.events)[-n:])


def describe(msg: Message) -> str:
    """A one-line summary of a message for the trace."""
    name = type(msg).__name__
    head = f"{name} {msg.src}->{msg.dst} t{msg.term}"
    if isinstance(msg, RequestVote):
        return f"{head} last={msg.last_log_index}/{msg.last_log_term}{' pre' if msg.pre_vote else ''}"
    if isinstance(msg, RequestVoteResp):
        return f"{head} granted={msg.granted}{' pre' if msg.pre_vote else ''}"
    if isinstance(msg, AppendEntriesResp):
        return f"{head} ok={msg.success} index={msg.index} hint={msg.hint_index}/{msg.hint_term}"
    if isinstance(msg, InstallSnapshot):
        return f"{head} snap={msg.meta.index}/{msg.meta.term} bytes={len(msg.data)}"
    if isinstance(msg, InstallSnapshotResp):
        return f"{head} index={msg.index}"
    if isinstance(msg, AppendEntries):
        span = f"{msg.entries[0].index}..{msg.entries[-1].index}" if msg.entries else "-"
        return f"{head} prev={msg.prev_index}/{msg.prev_term} entries={span} commit={msg.commit}"
    if isinstance(msg, (Heartbeat, HeartbeatResp)):
        return f"{head} seq={msg.seq}"
    return head


# ============================================================================ storage


class NodeDisk:
    """One node's durable state across its incarnations (a MemoryStorage under a lock)."""

    def __init__(self) -> None:
        self.mem = MemoryStorage()
        #: held only while reading or changing ``mem`` (never while sleeping)
        self.lock = threading.Lock()

    def durable(self) -> tuple[HardState, int]:
        """(hard state, last index — a snapshot's when the log after it is empty) as stored now."""
        with self.lock:
            return self.mem.hard_state, self.mem.last_index


class DiskView:
    """What one incarnation of a node sees of its disk: the :class:`Storage` protocol, slowly.

    Calls are serialized (like DiskStorage's mutex, held across the fsync) and each sleeps a seeded
    random time in the calling thread, so Ready batches queue up behind it. A write takes effect
    atomically when its sleep ends, unless the view was fenced meanwhile (the node crashed before
    the fsync returned): then nothing of it survives.
    """

    def __init__(
        self, farm: Farm, node_id: str, disk: NodeDisk, rng: random.Random, max_delay_ms: float
    ) -> None:
        self.farm = farm
        self.node_id = node_id
        self.disk = disk
        self.rng = rng
        self.max_delay_ms = max_delay_ms
        self.alive = True
        self._mutex = threading.Lock()

    def fence(self) -> None:
        with self.disk.lock:
            self.alive = False

    def _sleep(self) -> None:
        # called with _mutex held: the draws come in call order
        ms = self.rng.uniform(0, self.max_delay_ms)
        if self.rng.random() < 0.1:
            ms *= 3
        time.sleep(ms / 1000)

    def load(self) -> LoadedState:
        with self.disk.lock:
            return self.disk.mem.load()

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: SnapshotToInstall | None
    ) -> None:
        with self._mutex:
            self._sleep()
            with self.disk.lock:
                if not self.alive:
                    raise NodeCrashed(self.node_id)
                self.disk.mem.save(hard_state, entries, snapshot)
                last = self.disk.mem.last_index
        what = []
        if snapshot is not None:
            what.append(f"snapshot={snapshot.meta.index}/{snapshot.meta.term}")
            self.farm.checker.snapshot_bytes(self.node_id, snapshot.meta.index, snapshot.data, "installed")
            self.farm.stats["installs"] += 1
        if entries:
            what.append(f"entries={entries[0].index}..{entries[-1].index}")
        if hard_state is not None:
            what.append(f"hs=t{hard_state.term}/{hard_state.vote}")
        self.farm.stats["saves"] += 1
        self.farm.trace.add(self.node_id, f"saved {' '.join(what)} (last={last})")

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        with self._mutex:
            self._sleep()
            with self.disk.lock:
                if not self.alive:
                    raise NodeCrashed(self.node_id)
                self.disk.mem.save_snapshot(meta, data)
        self.farm.checker.snapshot_bytes(self.node_id, meta.index, data, "stored")
        self.farm.stats["local_snapshots"] += 1
        self.farm.trace.add(self.node_id, f"stored a local snapshot at {meta.index}/{meta.term}")

    def snapshot_data(self) -> tuple[SnapshotMeta, bytes] | None:
        with self._mutex:
            self._sleep()
            with self.disk.lock:
                return self.disk.mem.snapshot_data()

    def close(self) -> None:
        pass


# ============================================================================ state machine


class CheckedStateMachine(KVStateMachine):
    """The real KV state machine, reporting its snapshots and restores to the checker."""

    def __init__(self, checker: Checker, node_id: str) -> None:
        super().__init__()
        self.checker = checker
        self.node_id = node_id
        #: the last index this incarnation applied or restored (checked by the apply listener)
        self.checked_index = 0

    def snapshot(self) -> bytes:
        blob = super().snapshot()
        self.checker.snapshot_bytes(self.node_id, self.applied_index, blob, "taken")
        return blob

    def restore(self, blob: bytes) -> None:
        before = self.applied_index
        super().restore(blob)
        self.checker.on_restore(self, before, blob, KVStateMachine.snapshot(self))


# ============================================================================ invariants


class Checker:
    """Cross-node invariants, fed by apply listeners, state machines and storage views."""

    def __init__(self, fail: Callable[[str], None]) -> None:
        self.fail = fail
        #: every entry any node applied, by index (with the first node that applied it)
        self.entries: dict[int, tuple[Entry, str]] = {}
        #: snapshot bytes by index, with where they were first seen
        self.snapshots: dict[int, tuple[bytes, str]] = {}
        self._lock = threading.Lock()  # storage views report from worker threads

    def on_apply(self, sm: CheckedStateMachine, e: Entry) -> None:
        if e.index != sm.checked_index + 1:
            self.fail(
                f"{sm.node_id} applied index {e.index} after {sm.checked_index}: applies must be "
                f"consecutive (jumps only to an installed snapshot)"
            )
        sm.checked_index = e.index
        seen = self.entries.setdefault(e.index, (e, sm.node_id))
        if seen[0] != e:
            self.fail(f"state machine safety: {seen[1]} applied {seen[0]} but {sm.node_id} applied {e}")

    def on_restore(self, sm: CheckedStateMachine, before: int, blob: bytes, again: bytes) -> None:
        if sm.applied_index <= before:
            self.fail(f"{sm.node_id} restored a snapshot at {sm.applied_index} over applied {before}")
        if again != blob:
            self.fail(f"{sm.node_id}: restoring the snapshot at {sm.applied_index} changes its bytes")
        sm.checked_index = sm.applied_index
        self.snapshot_bytes(sm.node_id, sm.applied_index, blob, "restored")

    def snapshot_bytes(self, node_id: str, index: int, blob: bytes, how: str) -> None:
        with self._lock:
            seen = self.snapshots.setdefault(index, (blob, f"{how} by {node_id}"))
        if seen[0] != blob:
            self.fail(f"snapshots at index {index} differ: {seen[1]} vs {how} by {node_id}")


# ============================================================================ network


@dataclass(slots=True)
class Endpoint:
    """The Transport one incarnation of a node sends through; dead once the node crashed."""

    farm: Farm
    node_id: str
    alive: bool = True

    def send(self, msg: Message) -> None:
        if self.alive:
            self.farm.route(self.node_id, msg)

    def update_peers(self, addresses: dict[str, str]) -> None:
        pass


# ============================================================================ the farm


@dataclass(slots=True)
class Slot:
    id: str
    disk: NodeDisk = field(default_factory=NodeDisk)
    driver: RaftDriver | None = None
    view: DiskView | None = None
    endpoint: Endpoint | None = None
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    key: str
    value: str
    version: int
    at: float


@dataclass(frozen=True, slots=True)
class ReadResult:
    key: str
    began: float
    node: str
    version: int
    value: object


class Farm:
    def __init__(self, seed: int, config: FarmConfig) -> None:
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        self.net_rng = random.Random(self.rng.getrandbits(64))
        self.fault_rng = random.Random(self.rng.getrandbits(64))
        self.trace = Trace()
        self.failures: list[str] = []
        self.failed = asyncio.Event()
        self.checker = Checker(self.fail)
        self.ids = [f"n{i + 1}" for i in range(config.nodes)]
        self.slots = {nid: Slot(nid) for nid in self.ids}
        self.bootstrap = Membership(
            voters=frozenset(self.ids), addresses=tuple((nid, f"farm://{nid}") for nid in self.ids)
        )
        self.settings = DriverSettings(
            tick_ms=config.tick_ms,
            snapshot_threshold=config.snapshot_threshold,
            raft=RaftSettings(
                heartbeat_ticks=1,
                election_ticks=config.election_ticks,
                max_entries_per_msg=config.max_entries_per_msg,
                max_inflight_msgs=config.max_inflight_msgs,
            ),
        )
        skew = config.clock_skew_ms
        self.clock_offset_ms = {nid: self.fault_rng.uniform(-skew, skew) for nid in self.ids}
        #: the partition in place, if any (one at a time; it heals on a timer)
        self.cut: Partition | None = None
        self.loss = config.loss
        self.dup = config.dup
        self._link_free_at: dict[tuple[str, str], float] = {}
        self.stats: dict[str, int] = {
            k: 0
            for k in (
                "sent", "lost", "cut", "dup", "saves", "installs", "local_snapshots", "crashes",
                "transfers", "partitions", "acked", "reads", "lost_proposals", "unknown",
            )
        }  # fmt: skip
        self.acks: list[Ack] = []
        self.reads: list[ReadResult] = []
        #: commands that must never be applied (refused with NotLeader or ProposalLost)
        self.refused: set[bytes] = set()
        self.commands: dict[bytes, tuple[str, str]] = {}
        self.chaos = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self.stopped: list[RaftDriver] = []
        self._bg: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- failures

    def fail(self, what: str) -> None:
        """Record a violation and end the run soon (callable from storage worker threads too)."""
        self.failures.append(f"at {self.trace.now_ms():.1f}ms: {what}")
        self.trace.add("!!", what.splitlines()[0])
        if self.loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.failed.set()
        else:
            self.loop.call_soon_threadsafe(self.failed.set)

    def report(self) -> str:
        first = "\n".join(self.failures[:8])
        return (
            f"driver farm seed {self.seed} ({self.cfg.nodes} nodes) failed:\n{first}\n"
            f"config: {self.cfg}\nstats: {self.stats}\n"
            f"replay (best effort: same faults, not the same thread interleaving):\n"
            f"  {REPLAY.format(seed=self.seed, chaos_s=self.cfg.chaos_s)}\n"
            f"trace tail:\n{self.trace.tail()}"
        )

    # ----------------------------------------------------------------- nodes

    def live(self) -> list[RaftDriver]:
        return [s.driver for s in self.slots.values() if s.driver is not None]

    async def start_node(self, nid: str) -> None:
        slot = self.slots[nid]
        assert slot.driver is None
        slot.incarnation += 1
        disk_rng = random.Random(self.rng.getrandbits(64))
        slot.view = DiskView(self, nid, slot.disk, disk_rng, self.disk_ms(nid))
        slot.endpoint = Endpoint(self, nid)
        sm = CheckedStateMachine(self.checker, nid)
        d = RaftDriver(
            nid,
            bootstrap=self.bootstrap,
            storage=slot.view,
            transport=slot.endpoint,
            settings=self.settings,
            state_machine=sm,
            clock_ms=lambda: int(time.time() * 1000 + self.clock_offset_ms[nid]),
            seed=self.rng.getrandbits(32),
        )
        sm.checked_index = sm.applied_index
        view = slot.view
        d.apply_listeners.append(lambda e: self.checker.on_apply(sm, e))
        d.fatal_listeners.append(lambda exc: self._on_fatal(nid, view, exc))
        d.role_listeners.append(
            lambda role, term, leader: self.trace.add(nid, f"is {role.value} t{term} ({leader})")
        )
        slot.driver = d
        self.trace.add(nid, f"starts (incarnation {slot.incarnation}, applied {sm.applied_index}, "
                            f"log to {d.raft.last_index}, term {d.raft.term})")  # fmt: skip
        await d.start()

    def _on_fatal(self, nid: str, view: DiskView, exc: BaseException) -> None:
        if isinstance(exc, NodeCrashed) and not view.alive:
            return  # the farm crashed this node under its feet: expected
        tb = "".join(traceback.format_exception(exc)).strip()
        self.fail(f"{nid}: fatal error in the driver: {exc!r}\n{tb}")

    def check_tasks(self, nid: str, d: RaftDriver) -> None:
        """No task of a running driver may have ended (a dead ready loop or ticker is silent)."""
        for t in d._tasks:  # white-box: the driver does not expose its tasks
            if t.done() and not t.cancelled():
                exc = t.exception()
                if isinstance(exc, NodeCrashed):
                    continue
                tb = "".join(traceback.format_exception(exc)).strip() if exc else "returned"
                self.fail(f"{nid}: driver task {t.get_name()} died: {exc!r}\n{tb}")

    async def crash(self, nid: str) -> None:
        """Power loss: unfinished writes are lost, in-flight messages to the node too."""
        slot = self.slots[nid]
        d, view, ep = slot.driver, slot.view, slot.endpoint
        assert d is not None and view is not None and ep is not None
        self.check_tasks(nid, d)
        view.fence()
        ep.alive = False
        slot.driver = None
        self.stats["crashes"] += 1
        self.trace.add(nid, "CRASH")
        self.stopped.append(d)
        await d.stop()

    # ----------------------------------------------------------------- network

    def route(self, src: str, msg: Message) -> None:
        self._check_durable(src, msg)
        if isinstance(msg, InstallSnapshot) and not msg.data:
            self.fail(f"{src} sent an InstallSnapshot without data: {describe(msg)}")
        blob = encode_message(msg)
        chatty = isinstance(msg, (Heartbeat, HeartbeatResp))
        self.stats["sent"] += 1
        link = (src, msg.dst)
        if not self.link_up(src, msg.dst):
            self.stats["cut"] += 1
            return
        if self.net_rng.random() < self.loss:
            self.stats["lost"] += 1
            if not chatty:
                self.trace.add(src, f"lost {describe(msg)}")
            return
        copies = 2 if self.net_rng.random() < self.dup else 1
        self.stats["dup"] += copies - 1
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            delay = self.net_rng.uniform(0, self.cfg.delay_max_ms) / 1000
            if self.cfg.fifo:
                at = max(loop.time() + delay, self._link_free_at.get(link, 0.0))
                self._link_free_at[link] = at
                delay = at - loop.time()
            loop.call_later(delay, self._deliver, src, msg.dst, blob, not chatty)

    def _deliver(self, src: str, dst: str, blob: bytes, traced: bool) -> None:
        slot = self.slots[dst]
        if slot.driver is None or not self.link_up(src, dst):
            return
        msg = decode_message(blob)
        if traced:
            self.trace.add(dst, f"got {describe(msg)}")
        try:
            slot.driver.step(msg)
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc)).strip()
            self.fail(f"{dst}: step({describe(msg)}) raised {exc!r}\n{tb}")

    def _check_durable(self, src: str, msg: Message) -> None:
        """A message may leave only once everything it vouches for is on the sender's disk."""
        hs, last_index = self.slots[src].disk.durable()
        pre = isinstance(msg, (RequestVote, RequestVoteResp)) and msg.pre_vote
        if not pre and hs.term < msg.term:
            self.fail(f"{src} sent {describe(msg)} while its durable term is {hs.term}")
        if isinstance(msg, RequestVote) and not pre and hs.term == msg.term and hs.vote != src:
            self.fail(f"{src} asked for votes in t{msg.term} but its durable vote is {hs.vote}")
        if isinstance(msg, RequestVoteResp) and msg.granted and not pre and hs.term == msg.term:
            if hs.vote != msg.dst:
                self.fail(f"{src} granted its t{msg.term} vote to {msg.dst}; durable vote: {hs.vote}")
        # Acknowledgements are checked only in the sender's current durable term. One of an older
        # term may be stale: the core queued it, then a newer leader's message (same Ready)
        # replaced those entries before they were saved. That is safe — the newer leader was
        # elected without this node, so its voters meet any quorum the old leader could count in
        # a node that really stores the entries — and etcd's raft behaves the same.
        if hs.term != msg.term:
            return
        if isinstance(msg, AppendEntriesResp) and msg.success and msg.index > last_index:
            self.fail(f"{src} acknowledged entries up to {msg.index} but stores only up to {last_index}")
        if isinstance(msg, InstallSnapshotResp) and msg.index > last_index:
            self.fail(f"{src} acknowledged a snapshot at {msg.index}; it stores up to {last_index}")

    def link_up(self, src: str, dst: str) -> bool:
        return self.cut is None or not self.cut.blocks(src, dst)

    def partition(self, p: Partition, heal_after_s: float) -> None:
        self.cut = p
        self.stats["partitions"] += 1
        self.trace.add("net", f"{p.kind} partition {p.describe} for {heal_after_s * 1000:.0f}ms")

        def heal() -> None:
            if self.cut is p:
                self.cut = None
                self.trace.add("net", "partition healed")

        asyncio.get_running_loop().call_later(heal_after_s, heal)

    # ----------------------------------------------------------------- faults

    def leader(self, rng: random.Random) -> RaftDriver | None:
        """A node that believes it leads (maybe a stale one: that path must be safe too)."""
        leaders = [d for d in self.live() if d.is_leader()]
        return rng.choice(leaders) if leaders else None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _restart_later(self, nid: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if self.slots[nid].driver is None and not self.failed.is_set():
            await self.start_node(nid)

    def disk_ms(self, nid: str) -> float:
        """The normal latency bound of ``nid``'s disk."""
        laggard = nid == self.ids[-1]
        return self.cfg.disk_max_ms * (self.cfg.laggard_factor if laggard else 1.0)

    async def _slow_disk(self, nid: str, factor: float, for_s: float) -> None:
        view = self.slots[nid].view
        if view is None:
            return
        view.max_delay_ms = self.disk_ms(nid) * factor
        self.trace.add(nid, f"disk {factor}x slower for {for_s * 1000:.0f}ms")
        try:
            await asyncio.sleep(for_s)
        finally:
            view.max_delay_ms = self.disk_ms(nid)

    async def _transfer(self, d: RaftDriver, target: str | None) -> None:
        try:
            new = await d.transfer_leadership(target, timeout_s=0.3)
            self.trace.add(d.id, f"transfer to {target} -> leader {new}")
        except Exception as exc:
            self.fail(f"{d.id}: transfer_leadership({target}) raised {exc!r}")

    async def nemesis(self) -> None:
        rng = self.fault_rng
        down_max = max(1, (self.cfg.nodes - 1) // 2)
        while True:
            await asyncio.sleep(rng.expovariate(1 / self.cfg.fault_every_s))
            if not self.chaos or self.failed.is_set():
                return
            for s in self.slots.values():
                if s.driver is not None:
                    self.check_tasks(s.id, s.driver)
            up = [s.id for s in self.slots.values() if s.driver is not None]
            down = [nid for nid in self.ids if nid not in up]
            action = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            if action == "crash" and up and (len(down) < down_max or rng.random() < 0.1):
                nid = rng.choice(up)
                await self.crash(nid)
                self._spawn(self._restart_later(nid, rng.choice([0.02, 0.2, 0.6]) * rng.random()))
            elif action == "partition":
                ids = self.ids[:]
                rng.shuffle(ids)
                k = rng.randint(1, len(ids) - 1)
                self.partition(symmetric([ids[:k], ids[k:]]), rng.uniform(0.05, 0.4))
            elif action == "isolate_leader":
                ld = self.leader(rng)
                if ld is not None:
                    others = [n for n in self.ids if n != ld.id]
                    self.partition(isolate(ld.id, others), rng.uniform(0.05, 0.4))
            elif action == "one_way":
                x, y = rng.sample(self.ids, 2)
                self.partition(one_way(x, y), rng.uniform(0.05, 0.4))
            elif action == "transfer":
                ld = self.leader(rng)
                if ld is not None:
                    target = rng.choice([None, *[n for n in self.ids if n != ld.id]])
                    self.stats["transfers"] += 1
                    self.trace.add(ld.id, f"transfer leadership to {target}")
                    self._spawn(self._transfer(ld, target))
            elif action == "clock":
                nid = rng.choice(self.ids)
                jump = rng.uniform(-self.cfg.clock_skew_ms, self.cfg.clock_skew_ms)
                self.clock_offset_ms[nid] += jump
                self.trace.add(nid, f"clock jumps {jump:+.0f}ms")
            elif action == "slow_disk" and up:
                factor = rng.choice([4, 10])
                self._spawn(self._slow_disk(rng.choice(up), factor, rng.uniform(0.1, 0.5)))

    # ----------------------------------------------------------------- clients

    async def client(self, cid: int) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        loop = asyncio.get_running_loop()
        seq = 0
        while self.chaos and not self.failed.is_set():
            d = self.leader(rng)
            if d is None:
                await asyncio.sleep(self.cfg.tick_ms / 1000)
                continue
            key = f"k{rng.randrange(self.cfg.keys)}"
            if rng.random() < self.cfg.read_ratio:
                await self._read(d, key, loop)
                continue
            seq += 1
            value = f"c{cid}-{seq}"
            cmd = encode_command("set", key=key, value=value)
            self.commands[cmd] = (key, value)
            try:
                result = await d.propose(cmd, timeout_s=self.cfg.request_timeout_s)
            except (NotLeader, LeadershipTransferInProgress):
                self.refused.add(cmd)
                await asyncio.sleep(self.cfg.tick_ms / 1000)
            except ProposalLost:
                self.refused.add(cmd)
                self.stats["lost_proposals"] += 1
            except OutcomeUnknown:
                self.stats["unknown"] += 1
            except Exception as exc:
                self.fail(f"{d.id}: propose raised {exc!r}")
            else:
                version = result["version"]
                self.acks.append(Ack(key, value, version, loop.time()))
                self.stats["acked"] += 1
                self.trace.add(d.id, f"acked {key}={value} at {version}")

    async def _read(self, d: RaftDriver, key: str, loop: asyncio.AbstractEventLoop) -> None:
        began = loop.time()
        try:
            await d.read_barrier(self.cfg.request_timeout_s)
        except (NotLeader, ReadAborted, TimeoutError):
            return
        except Exception as exc:
            self.fail(f"{d.id}: read_barrier raised {exc!r}")
            return
        rec = d.sm.get(key)  # right after the barrier, with no await in between
        version, value = (rec.version, rec.value) if rec is not None else (0, None)
        self.reads.append(ReadResult(key, began, d.id, version, value))
        self.stats["reads"] += 1

    # ----------------------------------------------------------------- phases

    async def start_all(self) -> None:
        """Start every node (in the running loop); pair with :meth:`shutdown`."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        for nid in self.ids:
            await self.start_node(nid)

    async def run(self) -> None:
        """The whole run: chaos with clients, then heal and settle, then the final checks."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=4 * self.cfg.nodes, thread_name_prefix="farm-disk")
        loop.set_default_executor(executor)
        try:
            await self.start_all()
            clients = [asyncio.create_task(self.client(i)) for i in range(self.cfg.clients)]
            nemesis = asyncio.create_task(self.nemesis())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.failed.wait(), self.cfg.chaos_s)
            self.chaos = False
            await asyncio.gather(nemesis, *clients)
            if not self.failed.is_set():
                await self.heal_and_settle()
        finally:
            await self.shutdown()
            executor.shutdown(wait=True)
        if not self.failures:
            self.final_checks()
        if self.failures:
            raise FarmFailure(self.report())

    async def heal_and_settle(self) -> None:
        """Faults off, every node up; a marker write must commit and reach every node in time."""
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        self.cut = None
        self.loss = self.dup = 0.0
        for s in self.slots.values():
            if s.driver is None:
                await self.start_node(s.id)
            elif s.view is not None:
                s.view.max_delay_ms = self.disk_ms(s.id)
        self.trace.add("farm", "healed: all nodes up, no faults")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.settle_s
        rng = random.Random(self.seed)
        marker = encode_command("set", key="marker", value=f"seed-{self.seed}")
        index = 0
        while not index:
            if loop.time() > deadline or self.failed.is_set():
                self.fail(f"liveness: no leader committed a write within {self.cfg.settle_s}s of the heal")
                return
            d = self.leader(rng)
            if d is None:
                await asyncio.sleep(self.cfg.tick_ms / 1000)
                continue
            try:
                index = (await d.propose(marker, timeout_s=1.0))["version"]
            except (NotLeader, LeadershipTransferInProgress, ProposalLost, OutcomeUnknown):
                await asyncio.sleep(self.cfg.tick_ms / 1000)
        while True:
            drivers = self.live()
            applied = {d.id: d.sm.applied_index for d in drivers}
            if min(applied.values()) >= index and len(set(applied.values())) == 1:
                break
            if loop.time() > deadline or self.failed.is_set():
                self.fail(f"liveness: nodes did not converge on the marker at {index}: applied {applied}")
                return
            await asyncio.sleep(self.cfg.tick_ms / 1000)
        blobs = {d.id: KVStateMachine.snapshot(d.sm) for d in drivers}
        if len(set(blobs.values())) != 1:
            sizes = {nid: len(b) for nid, b in blobs.items()}
            self.fail(f"state machines differ after converging on {index}: snapshot sizes {sizes}")
        self.trace.add("farm", f"converged at {applied}")

    async def shutdown(self) -> None:
        self.chaos = False
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        for s in self.slots.values():
            if s.driver is not None:
                self.check_tasks(s.id, s.driver)
                self.stopped.append(s.driver)
                if s.view is not None:
                    s.view.fence()
                if s.endpoint is not None:
                    s.endpoint.alive = False
                await s.driver.stop()
        # Background snapshot writes and sends of stopped drivers end on their own (their storage
        # is fenced); wait for them so that no task outlives the loop.
        leftovers = [t for d in self.stopped for t in d._background]
        await asyncio.gather(*leftovers, return_exceptions=True)

    def final_checks(self) -> None:
        final = {s.id: s.driver for s in self.slots.values()}
        applied: dict[bytes, int] = {e.data: i for i, (e, _) in self.checker.entries.items() if e.data}
        top = max(self.checker.entries, default=0)
        missing = [i for i in range(1, top + 1) if i not in self.checker.entries]
        if missing:
            self.fail(f"no node ever applied indexes {missing[:10]} (below the top {top})")
        for a in self.acks:
            got = self.checker.entries.get(a.version)
            if got is None or self.commands.get(got[0].data) != (a.key, a.value):
                self.fail(f"write {a.key}={a.value} was acknowledged at {a.version}, which holds {got}")
        for cmd in self.refused:
            if cmd in applied:
                what = self.commands[cmd]
                self.fail(f"{what} was refused (NotLeader/ProposalLost) yet applied at {applied[cmd]}")
        latest: dict[str, int] = {}
        for a in self.acks:
            latest[a.key] = max(latest.get(a.key, 0), a.version)
        for nid, d in final.items():
            if d is None:
                continue
            for key, version in latest.items():
                rec = d.sm.get(key)
                if rec is None or rec.version < version:
                    self.fail(f"{nid} lost the acknowledged write of {key} at {version}: has {rec}")
        acks_by_key: dict[str, list[Ack]] = {}
        for a in self.acks:
            acks_by_key.setdefault(a.key, []).append(a)
        for r in self.reads:
            floor = max((a.version for a in acks_by_key.get(r.key, []) if a.at < r.began), default=0)
            if r.version < floor:
                self.fail(
                    f"stale read on {r.node}: {r.key} at version {r.version}, but a write at {floor} "
                    f"was acknowledged before the read began"
                )
            if r.version:
                got = self.checker.entries.get(r.version)
                if got is None or self.commands.get(got[0].data) != (r.key, r.value):
                    self.fail(f"read {r.key}={r.value!r}@{r.version} on {r.node}, but that index holds {got}")


def run_farm(seed: int, config: FarmConfig) -> Farm:
    """Run one seed (in a fresh event loop); raises FarmFailure on a violation."""
    farm = Farm(seed, config)
    asyncio.run(farm.run())
    return farm


__all__ = ["Farm", "FarmConfig", "FarmFailure", "run_farm"]
