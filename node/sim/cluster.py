"""The simulated cluster: one event queue, one seeded RNG, N nodes, a network, clients and faults.

Time is simulated (integer ms, ``Cluster.now``); nothing sleeps, no threads, no asyncio. A *step*
is one event taken from the queue: a node's tick, a message delivery, an fsync completion, a client
operation, a fault, a restart or a heal. Every step is followed by the incremental invariant checks
of the node it touched (see invariants.py); whole logs are re-checked every ``FULL_CHECK_EVERY``
steps and at the end.

Each node's Readys go through the test kit's driver (raft/testing/driver.py, shared with
tests/raftnet.py), which honours the Ready contract (raft/ready.py); what is the simulator's own is
*when* a persist step completes. With nothing in flight, a Ready is sometimes persisted at once
(then sent, applied and advanced in the same step); otherwise it is queued for the node's disk and
its ``after_persist=False`` messages leave at once. One fsync (group commit) covers every batch
queued when it starts and completes after a random delay (sometimes a long stall); then, batch by
batch in the order taken, the data reaches the disk, the held messages leave, a received snapshot
is installed into the state machine, committed entries are applied, reads are served, and
``advance()`` is called. In a *pipelined* run (most seeds, like node/driver.py) the driver keeps
taking Readys while an fsync is running; in a serial run it takes the next Ready only after the
previous one is finished. A crash loses every unsynced batch (or, with torn writes, keeps a prefix
of the batches being written).

Run :func:`run_seed` (or scripts/simulate.py) rather than building a Cluster by hand.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from raftstate.node.sim import invariants as inv
from raftstate.node.sim.faults import MIXES, FaultInjector, Mix
from raftstate.node.sim.network import Network
from raftstate.node.sim.node import SimNode
from raftstate.node.sim.statemachine import KVStateMachine, command
from raftstate.raft import (
    ConfChange,
    ConfChangeOp,
    EntryKind,
    LeadershipTransferInProgress,
    Membership,
    Message,
    NotLeader,
    RaftError,
    RaftNode,
    RaftSettings,
    Ready,
    RequestVote,
    RequestVoteResp,
    Role,
)
from raftstate.raft.testing import DiskContractError, Partition, ReadyDriver, WriteBatch

# event kinds
TICK, DELIVER, SYNC, CLIENT, FAULT, RESTART, HEAL, NET_RESTORE, RETIRE, TARGETED, CRASH = range(11)

FULL_CHECK_EVERY = 500
#: length of the idle-traffic check, in election timeouts
IDLE_WINDOW_TIMEOUTS = 5
TRACE_LEN = 40


class SimulationFailure(AssertionError):
    """An invariant failed (or the core raised). ``str()`` carries everything needed to replay."""

    def __init__(self, invariant: str, detail: str, *, seed: int, step: int, replay: str, trace: str) -> None:
        self.invariant = invariant
        self.detail = detail
        self.seed = seed
        self.step = step
        self.replay = replay
        super().__init__(
            f"invariant {invariant!r} violated at step {step} (seed {seed})\n  {detail}\n"
            f"last events:\n{trace}\nreplay: {replay}"
        )


@dataclass(slots=True)
class RunStats:
    seed: int
    mix: str
    nodes: int
    steps: int = 0
    liveness_steps: int = 0
    sim_ms: int = 0
    elections: int = 0
    max_term: int = 0
    commits: int = 0
    proposals: int = 0
    rejected: int = 0
    acked: int = 0
    #: proposals overwritten by another leader's entry (the client is told: not applied)
    lost: int = 0
    #: proposals whose proposer crashed first: how many turned out committed, how many not
    unknown_committed: int = 0
    unknown_lost: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    restarts: int = 0
    conf_changes: int = 0
    messages: int = 0
    faults: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int
    steps: int = 2000
    mix: str = "chaos"
    nodes: int = 3
    #: name of a mutant in sim.mutants (a deliberately broken core), or None for the real one
    mutant: str | None = None
    #: how a joining node is started: with the initial membership ("initial"), knowing nobody
    #: ("empty"), or either, drawn per joiner ("mixed")
    joiner_bootstrap: str = "mixed"
    #: take local snapshots (off: joiners and laggards must catch up from the log alone)
    snapshots: bool = True
    #: liveness phase budget, in election timeouts of simulated time
    liveness_timeouts: int = 60
    #: end the liveness phase by checking that an idle cluster only exchanges heartbeats
    check_idle_traffic: bool = True

    def replay_command(self) -> str:
        cmd = f"python scripts/simulate.py --seed {self.seed} --steps {self.steps} --mix {self.mix}"
        if self.nodes != 3:
            cmd += f" --nodes {self.nodes}"
        if self.mutant:
            cmd += f" --mutant {self.mutant}"
        if self.joiner_bootstrap != "mixed":
            cmd += f" --joiner-bootstrap {self.joiner_bootstrap}"
        if not self.snapshots:
            cmd += " --no-snapshots"
        return cmd


class Cluster:
    def __init__(self, cfg: SimConfig, node_cls: Callable[..., RaftNode] = RaftNode) -> None:
        self.cfg = cfg
        self.mix: Mix = MIXES[cfg.mix]
        self.node_cls = node_cls
        self.rng = random.Random(cfg.seed)
        rng = self.rng
        self.now = 0
        self.step = 0
        self._seq = 0
        self._q: list[tuple[int, int, int, Any, Any]] = []
        self.h = inv.History()
        self.stats = RunStats(cfg.seed, cfg.mix, cfg.nodes)
        self.trace: deque[tuple[int, int, str, Any]] = deque(maxlen=TRACE_LEN)
        self.net = Network(rng, dataclasses.replace(self.mix.net))
        self.faults = FaultInjector(self, self.mix)
        self.settings = RaftSettings(
            heartbeat_ticks=rng.choice([1, 2, 3]),
            election_ticks=10,
            max_entries_per_msg=rng.choice([4, 16, 64]),
            max_inflight_msgs=rng.choice([2, 8, 64]),
        )
        #: the drivers of this run take Readys while earlier ones are being persisted (node/driver.py)
        self.pipeline = rng.random() < 0.7
        self.n_initial = cfg.nodes
        #: CheckQuorum: two election timeouts of the slowest clock, plus slack
        self.quorum_loss_ms = 3 * self.settings.election_ticks * 11
        ids = [f"n{i}" for i in range(1, cfg.nodes + 1)]
        self.initial = Membership(voters=frozenset(ids))
        self.nodes: dict[str, SimNode] = {}
        self._next_id = cfg.nodes + 1
        #: nodes that granted a (real) vote recently: targets for crash_voter
        self.recent_voters: deque[str] = deque(maxlen=8)
        self.liveness = False
        #: no client traffic (the idle-traffic check at the very end)
        self.quiet = False
        #: last time who-can-reach-whom changed (partition, heal, crash, restart, pause, membership)
        self.topology_changed_at = 0
        self._open_ctx = 0
        self._cmd = 0
        #: (index, data) of writes whose proposer crashed or left before applying them
        self.unknown_writes: list[tuple[int, bytes]] = []
        for nid in ids:
            self._add_node(nid, self.initial)
        # first fault and first client op
        if self.faults.enabled():
            self._push(self.faults.next_delay(), FAULT, None, None)
        self._push(rng.randint(*self.mix.client_every_ms), CLIENT, None, None)

    # ================================================================= queue

    def _push(self, delay: int, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (self.now + delay, self._seq, kind, a, b))

    def note(self, kind: str, what: Any) -> None:
        self.trace.append((self.step, self.now, kind, what))

    # ================================================================= nodes

    def all_ids(self) -> list[str]:
        return [i for i, n in self.nodes.items() if not n.retired]

    def up_ids(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.up]

    def leader_id(self, *, include_paused: bool = False) -> str | None:
        """The live node that believes it leads, in the highest term (a frozen one only if asked:
        an operator or a client cannot reach a paused process)."""
        best: SimNode | None = None
        for n in self.nodes.values():
            if not include_paused and n.paused_until > self.now:
                continue
            if n.up and n.core is not None and n.core.role == Role.LEADER:
                if best is None or n.core.term > best.raft().term:
                    best = n
        return best.id if best else None

    def latest_voters(self) -> frozenset[str]:
        lead = self.leader_id(include_paused=True)
        if lead is not None:
            return self.nodes[lead].raft().membership.voters
        best: Membership | None = None
        best_key = (-1, -1)
        for n in self.nodes.values():
            if n.up and n.core is not None:
                key = (n.core.term, n.core.last_index)
                if key > best_key:
                    best_key, best = key, n.core.membership
        return best.voters if best else self.initial.voters

    def next_node_id(self) -> str:
        nid = f"n{self._next_id}"
        self._next_id += 1
        return nid

    def _add_node(self, nid: str, bootstrap: Membership) -> SimNode:
        rng = self.rng
        lo, hi = self.mix.snapshot_every
        n = SimNode(
            nid,
            bootstrap,
            clock_offset_ms=1_000_000 + rng.randint(-5_000, 5_000),
            tick_ms=rng.choice([9, 10, 10, 11]),
            snapshot_every=rng.randint(lo, hi),
            pipeline=self.pipeline,
        )
        self.nodes[nid] = n
        self._start(n)
        return n

    def _start(self, n: SimNode) -> None:
        n.incarnation += 1
        n.alive = True
        n.syncing = 0
        n.pending_writes = {}
        n.waiting_reads = []
        n.open_reads = set()
        n.paused_until = 0
        data = n.disk.latest_snapshot_data()
        n.sm = KVStateMachine.restore(data) if data is not None else KVStateMachine()
        n.core = self.node_cls(
            n.id,
            bootstrap=n.bootstrap,
            state=n.disk.persisted_state(),
            settings=self.settings,
            rng=random.Random(self.rng.getrandbits(64)),
            now_ms=n.wall_ms(self.now),
        )
        core = n.core
        n.driver = ReadyDriver(
            core,
            n.disk,
            send=lambda msg: self._send(n, msg),
            apply=lambda rd: self._apply(n, rd),
            persisted=lambda batch: self._persisted(n, batch),
            pipeline=n.pipeline,
        )
        snap = n.disk.snapshot_index
        n.seen_commit = snap
        h = self.h
        if n.incarnation > 1:
            inv.term_monotonic(h, n.id, core.term, where="restart")
            inv.vote_remembered(h, n.id, core.term, core.vote)
        if n.disk.snapshot is not None:
            inv.snapshot_integrity(h, n.id, n.disk.snapshot, n.sm.applied_index, n.sm.chain)
        inv.indexes_monotonic(
            h, n.id, n.incarnation, core.term, core.commit_index, core.applied_index, core.log.snapshot_index
        )
        if core.applied_index != n.sm.applied_index:
            raise inv.InvariantViolation(
                "indexes_monotonic",
                f"{n.id} restarted: core applied {core.applied_index}, state machine at {n.sm.applied_index}",
            )
        self._push(self.rng.randint(1, n.tick_ms), TICK, n.id, n.incarnation)
        self.note("start", f"{n.id} #{n.incarnation} term {core.term} commit {core.commit_index} snap {snap}")
        self.after_input(n)

    def _topology_changed(self, at: int | None = None) -> None:
        self.topology_changed_at = max(self.topology_changed_at, self.now if at is None else at)

    def crash(self, nid: str) -> None:
        n = self.nodes[nid]
        if not n.up:
            return
        self._topology_changed()
        torn = ""
        keep = 0
        # the batches the running fsync covers were written, not yet synced; later ones never
        # reached the disk
        ops = n.ready_driver().unsynced_ops(n.syncing)
        if ops and self.mix.torn_writes and self.rng.random() < 0.5:
            keep = self.rng.randint(0, ops)
            torn = f", {keep}/{ops} unsynced writes survive"
        n.ready_driver().crash(written=n.syncing, keep_ops=keep)
        n.alive = False
        n.core = None
        n.driver = None
        n.syncing = 0
        self._fail_reads(n)
        self.note("crash", f"{nid}{torn}")
        inv.durability(self.h, {i: m.disk for i, m in self.nodes.items() if not m.retired})

    def schedule_crash(self, nid: str, delay: int) -> None:
        self._push(delay, CRASH, nid, self.nodes[nid].incarnation)

    def schedule_restart(self, nid: str, delay: int) -> None:
        self._push(delay, RESTART, nid, None)

    def restart(self, nid: str) -> None:
        n = self.nodes[nid]
        if n.alive or n.retired:
            return
        self.stats.restarts += 1
        self._topology_changed()
        self._start(n)

    def retire(self, nid: str) -> None:
        n = self.nodes[nid]
        if n.retired:
            return
        self._topology_changed()
        n.alive = False
        n.retired = True
        n.core = None
        n.driver = None
        n.syncing = 0
        self._fail_reads(n)
        self.note("retire", nid)

    def pause(self, nid: str, ms: int) -> None:
        n = self.nodes[nid]
        n.paused_until = self.now + ms
        self._topology_changed(n.paused_until)  # from now on, and again when it wakes up
        self.note("fault", f"pause {nid} for {ms} ms")
        if n.core is not None and n.core.role == Role.LEADER:
            # a client that still believes it is the leader reaches it right as it wakes up
            self._push(ms, TARGETED, nid, n.incarnation)

    def _fail_reads(self, n: SimNode) -> None:
        for ctx in n.open_reads:
            if self.h.reads.pop(ctx, None) is not None:
                self.stats.reads_failed += 1
        n.open_reads = set()
        # the client never hears back: the outcome is unknown (resolved against the log at the end)
        self.unknown_writes.extend(n.pending_writes.items())
        n.pending_writes = {}

    # ================================================================= network faults

    def cut(self, p: Partition) -> None:
        self._topology_changed()
        self.net.cut(p)
        self.note("fault", f"{p.kind} partition {p.describe}")

    def schedule_heal(self, delay: int) -> None:
        self._push(delay, HEAL, self.net.partition, None)

    def schedule_net_restore(self, delay: int) -> None:
        self._push(delay, NET_RESTORE, None, None)

    # ================================================================= the loop

    def run(self) -> RunStats:
        try:
            for _ in range(self.cfg.steps):
                self._one_step()
            self._full_check()
            self._liveness_phase()
            self._full_check()
        except inv.InvariantViolation as v:
            raise self._failure(v.name, v.detail) from None
        except DiskContractError as e:
            raise self._failure(e.rule, str(e)) from None
        except SimulationFailure:
            raise
        except Exception as e:  # the core crashed (assert, IndexError...): a bug worth a replay
            raise self._failure("core_exception", f"{type(e).__name__}: {e}") from e
        self._finish_stats()
        return self.stats

    def _failure(self, name: str, detail: str) -> SimulationFailure:
        lines = []
        for step, t, kind, what in self.trace:
            text = repr(what) if not isinstance(what, str) else what
            if len(text) > 220:
                text = text[:217] + "..."
            lines.append(f"  #{step:<6} {t:>7}ms {kind:<8} {text}")
        state = []
        for n in self.nodes.values():
            if n.core is not None and n.up:
                c = n.core
                state.append(
                    f"  {n.id}: {c.role.value} term {c.term} vote {c.vote} leader {c.leader} "
                    f"last {c.last_index} commit {c.commit_index} snap {c.log.snapshot_index} "
                    f"voters {sorted(c.membership.voters)}"
                )
            else:
                state.append(f"  {n.id}: {'retired' if n.retired else 'down'}")
        trace = "\n".join(lines) + "\nnodes:\n" + "\n".join(state)
        phase = " (liveness phase)" if self.liveness else ""
        return SimulationFailure(
            name,
            f"{detail} [mix {self.cfg.mix}, {self.cfg.nodes} nodes{phase}"
            + (f", mutant {self.cfg.mutant}" if self.cfg.mutant else "")
            + "]",
            seed=self.cfg.seed,
            step=self.step,
            replay=self.cfg.replay_command(),
            trace=trace,
        )

    def _one_step(self) -> None:
        t, _, kind, a, b = heapq.heappop(self._q)
        self.now = t
        self.step += 1
        if kind == DELIVER:
            self._deliver(a)
        elif kind == TICK:
            self._tick(a, b)
        elif kind == SYNC:
            self._sync(a, b)
        elif kind == CLIENT:
            self._client()
            self._push(self.rng.randint(*self.mix.client_every_ms), CLIENT, None, None)
        elif kind == FAULT:
            if not self.liveness:
                self.faults.inject()
                self._push(self.faults.next_delay(), FAULT, None, None)
        elif kind == RESTART:
            self.restart(a)
        elif kind == HEAL:
            if self.net.partition is a and a is not None:
                self._topology_changed()
                self.net.heal()
                self.note("heal", a.describe)
        elif kind == NET_RESTORE:
            self.net.config = dataclasses.replace(self.faults.base_net)
            self.note("heal", "network back to normal")
        elif kind == RETIRE:
            self.retire(a)
        elif kind == TARGETED:
            self._targeted(a, b)
        elif kind == CRASH:
            if not self.liveness and self.nodes[a].incarnation == b:
                self.faults.crash_moment(a)
        if self.step % FULL_CHECK_EVERY == 0:
            self._full_check()

    def _defer(self, n: SimNode, kind: int, a: Any, b: Any) -> bool:
        """A paused node does nothing: push its event to when it wakes up."""
        if n.paused_until > self.now:
            self._seq += 1
            heapq.heappush(self._q, (n.paused_until, self._seq, kind, a, b))
            return True
        return False

    def _tick(self, nid: str, inc: int) -> None:
        n = self.nodes[nid]
        if not n.up or n.incarnation != inc:
            return
        if self._defer(n, TICK, nid, inc):
            return
        self._push(n.tick_ms, TICK, nid, inc)
        self._maybe_snapshot(n)
        n.raft().tick(n.wall_ms(self.now))
        self.after_input(n)

    def _deliver(self, msg: Message) -> None:
        n = self.nodes.get(msg.dst)
        if n is None or not n.up:
            return
        if not self.net.link_up(msg.src, msg.dst):
            return
        if self._defer(n, DELIVER, msg, None):
            return
        self.note("deliver", msg)
        n.raft().step(msg)
        self.after_input(n)

    def _sync(self, nid: str, inc: int) -> None:
        n = self.nodes[nid]
        if not n.up or n.incarnation != inc or not n.syncing:
            return
        if self._defer(n, SYNC, nid, inc):
            return
        group, n.syncing = n.syncing, 0
        driver = n.ready_driver()
        driver.finish(group)
        if driver.queue:
            self._start_fsync(n)
        self.after_input(n)

    def _start_fsync(self, n: SimNode) -> None:
        """One fsync (group commit) covers every batch queued so far."""
        n.syncing = len(n.ready_driver().queue)
        self._push(self._fsync_delay(), SYNC, n.id, n.incarnation)

    # ================================================================= the Ready loop

    def after_input(self, n: SimNode) -> None:
        """Drain the node's Ready batches (until one waits for its fsync), then check invariants."""
        core, driver = n.raft(), n.ready_driver()
        while driver.wants_ready():
            rd = core.ready()
            if rd.entries:
                first = rd.entries[0].index
                inv.log_matching(self.h, n.id, rd.entries, core.log.term_at(first - 1))
            if driver.take(rd, self._persist_now) and not n.syncing:
                self._start_fsync(n)
        self._observe(n)

    def _persist_now(self, batch: WriteBatch) -> bool:
        """Whether a Ready's persist step (nothing in flight before it) completes at once."""
        return batch.empty() or self.rng.random() < self.mix.fsync_instant

    def _fsync_delay(self) -> int:
        if self.mix.fsync_stall and self.rng.random() < self.mix.fsync_stall:
            return self.rng.randint(40, 200)
        return self.rng.randint(1, self.mix.fsync_max_ms)

    def _persisted(self, n: SimNode, batch: WriteBatch) -> None:
        hs = batch.hard_state
        if hs is not None:
            inv.term_monotonic(self.h, n.id, hs.term, where="disk")
            if hs.vote is not None:
                inv.vote_stability(self.h, n.id, hs.term, hs.vote)

    def _apply(self, n: SimNode, rd: Ready) -> None:
        """Step 3 of a Ready: install its snapshot, apply what it commits, serve reads."""
        if rd.snapshot is not None:
            sm = KVStateMachine.restore(rd.snapshot.data)
            meta = rd.snapshot.meta
            if sm.applied_index < n.sm.applied_index:
                raise inv.InvariantViolation(
                    "indexes_monotonic",
                    f"{n.id} installs a snapshot at {sm.applied_index} over applied {n.sm.applied_index}",
                )
            inv.snapshot_integrity(self.h, n.id, meta, sm.applied_index, sm.chain)
            n.sm = sm
            for idx in [i for i in n.pending_writes if i <= meta.index]:
                # never applied here one by one: the proposer cannot tell the client what happened
                self.unknown_writes.append((idx, n.pending_writes.pop(idx)))
            self.stats.snapshots_installed += 1
            self.note("install", f"{n.id} snapshot {meta.index}/{meta.term}")
        h = self.h
        sm = n.sm
        for e in rd.committed:
            inv.apply_in_order(n.id, sm.applied_index, e)
            sm.apply(e)
            first = inv.state_machine_safety(h, n.id, e, sm.applied_index, sm.chain)
            if first and e.kind == EntryKind.CONFIG:
                self._config_committed(ConfChange.decode(e.data))
            want = n.pending_writes.pop(e.index, None)
            if want is not None:
                if want == e.data:
                    h.acked[e.index] = want
                    if e.index > h.max_acked_index:
                        h.max_acked_index = e.index
                    self.stats.acked += 1
                else:
                    self.stats.lost += 1
        if rd.reads:
            n.waiting_reads.extend(rd.reads)
        if n.waiting_reads:
            self._serve_reads(n)
        for ctx in rd.dropped_reads:
            n.open_reads.discard(ctx)
            if h.reads.pop(ctx, None) is not None:
                self.stats.reads_failed += 1

    def _serve_reads(self, n: SimNode) -> None:
        still = []
        for rs in n.waiting_reads:
            if n.sm.applied_index >= rs.index:
                if rs.ctx in n.open_reads:
                    n.open_reads.discard(rs.ctx)
                    inv.linearizable_reads(self.h, rs.ctx, n.sm.applied_index)
                    self.stats.reads_ok += 1
            else:
                still.append(rs)
        n.waiting_reads = still

    def _send(self, n: SimNode, msg: Message) -> None:
        h = self.h
        if isinstance(msg, RequestVoteResp):
            if msg.granted and not msg.pre_vote:
                inv.vote_stability(h, n.id, msg.term, msg.dst)
                self.recent_voters.append(n.id)
                if self.mix.crash_after_vote and self.rng.random() < self.mix.crash_after_vote:
                    self.faults.crash_soon(n.id)
        elif isinstance(msg, RequestVote) and not msg.pre_vote:
            inv.vote_stability(h, n.id, msg.term, n.id)  # a candidate has voted for itself
            self.recent_voters.append(n.id)
        if not (isinstance(msg, (RequestVote, RequestVoteResp)) and msg.pre_vote):
            if msg.term > h.max_term_sent.get(n.id, 0):
                h.max_term_sent[n.id] = msg.term
        self.stats.messages += 1
        delays = self.net.route(msg.src, msg.dst)
        if not delays:
            return
        for d in delays:
            self._push(d, DELIVER, msg, None)

    def _observe(self, n: SimNode) -> None:
        """The incremental invariant checks for a node the step touched."""
        core = n.raft()
        h = self.h
        term = core.term
        if core.role == Role.LEADER and inv.election_safety(h, n.id, term):
            self.stats.elections += 1
            self.note("leader", f"{n.id} leads term {term}")
            n.leader_since = self.now
            inv.leader_completeness(h, n.id, term, core.log)
        if core.role == Role.LEADER:
            since = max(self.topology_changed_at, n.leader_since)
            if self.now - since > self.quorum_loss_ms and not self._reaches_quorum(n):
                inv.check_quorum(n.id, term, self.now - since)
        commit = core.log.committed
        if commit > n.seen_commit:
            if core.role == Role.LEADER:
                inv.commit_rule(n.id, term, core.log, commit)
                if (
                    n.persisting
                    and self.mix.crash_after_commit
                    and self.rng.random() < self.mix.crash_after_commit
                ):
                    self.faults.crash_soon(n.id)
            inv.commit_safety(h, n.id, term, core.log, n.seen_commit + 1, commit)
            n.seen_commit = commit
        inv.indexes_monotonic(
            h, n.id, n.incarnation, term, commit, n.sm.applied_index, core.log.snapshot_index
        )

    def _reaches_quorum(self, n: SimNode) -> bool:
        """Whether a quorum of the leader's voters (itself included) is up and linked both ways."""
        m = n.raft().membership
        net = self.net
        ok = 1 if n.id in m.voters else 0
        for v in m.voters:
            if v == n.id:
                continue
            p = self.nodes.get(v)
            if (
                p is not None
                and p.up
                and p.paused_until <= self.now
                and net.link_up(n.id, v)
                and net.link_up(v, n.id)
            ):
                ok += 1
        return ok >= m.quorum()

    def _maybe_snapshot(self, n: SimNode) -> None:
        if (
            not self.cfg.snapshots
            or n.persisting
            or n.sm.applied_index - n.disk.snapshot_index < n.snapshot_every
        ):
            return
        core = n.raft()
        idx = n.sm.applied_index
        meta = core.snapshot_meta(idx)
        data = n.sm.snapshot()
        inv.snapshot_integrity(self.h, n.id, meta, idx, n.sm.chain)
        n.disk.store_snapshot(meta, data, drop_log=False)
        core.compact(idx)
        self.stats.snapshots_taken += 1

    def _config_committed(self, cc: ConfChange) -> None:
        self.stats.conf_changes += 1
        self._topology_changed()
        self.note("config", f"committed {cc.op.name} {cc.node_id}")
        if cc.op == ConfChangeOp.REMOVE and cc.node_id in self.nodes:
            # the operator shuts the removed server down a little later
            self._push(self.rng.randint(50, 800), RETIRE, cc.node_id, None)

    def propose_conf_change(self, lead: str, cc: ConfChange) -> bool:
        n = self.nodes[lead]
        try:
            n.raft().propose_conf_change(cc, n.wall_ms(self.now))
        except RaftError:  # NotLeader, ConfChangeInProgress, LeadershipTransferInProgress
            return False
        self.note("fault", f"{lead} proposes {cc.op.name} {cc.node_id}")
        self._topology_changed()
        if cc.op == ConfChangeOp.ADD_LEARNER:
            how = self.cfg.joiner_bootstrap
            if how == "mixed":
                how = self.rng.choice(["initial", "empty"])
            boot = self.initial if how == "initial" else Membership()
            self._add_node(cc.node_id, boot)
        self.after_input(n)
        return True

    # ================================================================= clients

    def _client_target(self) -> SimNode | None:
        leaders = [
            n for n in self.nodes.values() if n.up and n.core is not None and n.core.role == Role.LEADER
        ]
        if leaders:
            # a client may well still talk to a deposed leader that does not know it yet
            return leaders[self.rng.randrange(len(leaders))]
        up = [n for n in self.nodes.values() if n.up]
        return up[self.rng.randrange(len(up))] if up else None

    def _client(self) -> None:
        if self.quiet:
            return
        n = self._client_target()
        if n is None:
            return
        if n.paused_until > self.now:
            self.stats.rejected += 1  # the request times out against a frozen process
            return
        if self.rng.random() < self.mix.read_share:
            self._read(n)
        else:
            self._write(n)

    def _targeted(self, nid: str, inc: int) -> None:
        n = self.nodes[nid]
        if not n.up or n.incarnation != inc:
            return
        self._read(n)
        self._write(n)

    def _write(self, n: SimNode) -> None:
        self._cmd += 1
        data = command(f"k{self.rng.randrange(5)}", f"v{self._cmd}")
        self.stats.proposals += 1
        try:
            idx = n.raft().propose(data, n.wall_ms(self.now))
        except (NotLeader, LeadershipTransferInProgress):
            self.stats.rejected += 1
            return
        n.pending_writes[idx] = data
        self.note("propose", f"{n.id} {data.decode()} at {idx}")
        self.after_input(n)

    def _read(self, n: SimNode) -> None:
        self._open_ctx += 1
        ctx: Hashable = ("r", self._open_ctx)
        self.h.reads[ctx] = inv.PendingRead(n.id, n.incarnation, self.h.read_floor(), self.step)
        try:
            n.raft().read_index(ctx)
        except NotLeader:
            del self.h.reads[ctx]
            self.stats.reads_failed += 1
            return
        n.open_reads.add(ctx)
        self.note("read", f"{n.id} {ctx} floor {self.h.read_floor()}")
        self.after_input(n)

    # ================================================================= end of run

    def _full_check(self) -> None:
        for n in self.nodes.values():
            if n.up and n.core is not None:
                inv.log_matching_full(self.h, n.id, n.core.log)

    def _liveness_phase(self) -> None:
        """Heal everything, restart every crashed node, then require a leader and a final marker
        applied on every member within a bounded amount of simulated time."""
        self.liveness = True
        self.note("liveness", "heal everything, restart crashed nodes")
        self.net.heal()
        self.net.config = dataclasses.replace(MIXES["calm"].net)
        self.faults.base_net = self.net.config
        for n in self.nodes.values():
            n.paused_until = 0
            if not n.alive and not n.retired:
                self.restart(n.id)
        start_step = self.step
        deadline = self.now + self.cfg.liveness_timeouts * self.settings.election_ticks * 10
        # Markers proposed so far: (index, data). One is proposed on every new leadership (node,
        # incarnation, term) until one of them commits; then it must reach every member.
        markers: list[tuple[int, bytes]] = []
        proposer: tuple[str, int, int] | None = None
        done: int | None = None
        next_try = self.now
        while True:
            if done is None and self.now >= next_try:
                next_try = self.now + 20
                for idx, data in markers:
                    e = self.h.applied.get(idx)
                    if e is not None and e.data == data:
                        done = idx
                lead = self.leader_id()
                if done is None and lead is not None:
                    n = self.nodes[lead]
                    who = (lead, n.incarnation, n.raft().term)
                    if who != proposer:
                        data = command("marker", str(len(markers) + 1))
                        try:
                            idx = n.raft().propose(data, n.wall_ms(self.now))
                        except (NotLeader, LeadershipTransferInProgress):
                            pass
                        else:
                            proposer = who
                            markers.append((idx, data))
                            n.pending_writes[idx] = data
                            self.note("liveness", f"marker proposed on {lead} at {idx}")
                            self.after_input(n)
            if done is not None and self._marker_everywhere(done):
                break
            if self.now > deadline:
                lead = self.leader_id()
                raise inv.InvariantViolation(
                    "liveness",
                    f"no progress within {self.cfg.liveness_timeouts} election timeouts after healing: "
                    f"leader {lead}, markers proposed {markers}, committed {done}",
                )
            self._one_step()
        self._check_idle_traffic()
        self.stats.liveness_steps = self.step - start_step
        # every member converged on the committed prefix
        for n in self.nodes.values():
            if n.up:
                inv.state_machine_safety(self.h, n.id, None, n.sm.applied_index, n.sm.chain)

    def _check_idle_traffic(self) -> None:
        """With every member caught up and no client traffic, a cluster only exchanges heartbeats."""
        if not self.cfg.check_idle_traffic:
            return
        self.quiet = True
        lead = self.leader_id()
        members = len(self.nodes[lead].raft().membership.members) if lead else len(self.up_ids())
        window_ms = IDLE_WINDOW_TIMEOUTS * self.settings.election_ticks * 10
        rounds = window_ms / (9 * self.settings.heartbeat_ticks)  # the fastest clock ticks every 9 ms
        sent0, end = self.stats.messages, self.now + window_ms
        while self.now < end:
            self._one_step()
        inv.idle_traffic(self.stats.messages - sent0, members, rounds, window_ms)
        self.quiet = False

    def _marker_everywhere(self, idx: int) -> bool:
        lead = self.leader_id()
        if lead is None:
            return False
        members = self.nodes[lead].raft().membership.members
        for m in sorted(members):
            n = self.nodes.get(m)
            if n is None or not n.up or n.sm.applied_index < idx:
                return False
        return True

    def _finish_stats(self) -> None:
        s = self.stats
        s.steps = self.cfg.steps
        s.sim_ms = self.now
        s.max_term = max(self.h.leaders, default=0)
        s.commits = self.h.max_committed
        s.faults = Counter(self.faults.counts)
        for idx, data in self.unknown_writes:
            e = self.h.applied.get(idx)
            if e is not None and e.data == data:
                s.unknown_committed += 1
            else:
                s.unknown_lost += 1


def run_seed(cfg: SimConfig) -> RunStats:
    node_cls: Callable[..., RaftNode] = RaftNode
    if cfg.mutant:
        from raftstate.node.sim.mutants import MUTANTS

        node_cls = MUTANTS[cfg.mutant]
    return Cluster(cfg, node_cls).run()
