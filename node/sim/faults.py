"""Fault mixes (the run classes) and the injector that applies them to a cluster.

A :class:`Mix` is a table: how often a fault happens, which kinds are drawn with what weight, and the
network / disk / client parameters of the run. The injector draws everything from the cluster's one
seeded ``random.Random``.

Fault kinds (the names used in summaries):

=================  ===============================================================================
crash              kill -9 one node (a minority of voters at most down at once); restart later
crash_fsync        crash a node while its fsync is pending (loses, or tears, the unsynced batch)
crash_voter        crash a node that just granted a vote, restart it almost at once
crash_all          every node at once; each restarts after its own delay
crash_moment       (not drawn: triggered) a crash right after a vote grant or a leader's commit
partition          symmetric split into two sides
one_way            asymmetric: a set of nodes cannot send to another set (replies still flow back)
isolate_leader     cut the current leader off from everyone
bridge             a line A–B–C: the middle node talks to both sides, the sides not to each other
loss_burst         heavy loss / duplication / reordering for a while
clock_jump         one node's wall clock jumps forward or back (affects only time stamps)
pause              freeze one node (often the leader) for a while; a client hits it on resume
membership         one change: add a learner, promote it, remove a node (the leader included)
transfer           leadership transfer to a random voter
campaign           a follower starts an election on its own
=================  ===============================================================================
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raftstate.node.sim.network import NetConfig
from raftstate.raft import ConfChange, ConfChangeOp, RaftError, Role
from raftstate.raft.testing import partition

if TYPE_CHECKING:
    from raftstate.node.sim.cluster import Cluster


@dataclass(frozen=True, slots=True)
class Mix:
    name: str
    #: fault kind -> weight (kinds not listed never happen)
    weights: dict[str, float]
    #: a fault every [lo, hi] ms of simulated time
    fault_every_ms: tuple[int, int] = (150, 600)
    net: NetConfig = field(default_factory=NetConfig)
    #: probability that a persist step completes at once; else it takes [1, fsync_max_ms]
    fsync_instant: float = 0.5
    fsync_max_ms: int = 12
    #: probability that an fsync stalls for 40-200 ms (a busy disk): long windows for crashes
    fsync_stall: float = 0.0
    #: a crash keeps a random prefix of the unsynced batch instead of nothing
    torn_writes: bool = False
    #: crashes at dangerous moments (within a few ms, restart soon): probability after a node
    #: grants a vote, and after a leader's commit index advances while its own fsync is pending
    crash_after_vote: float = 0.0
    crash_after_commit: float = 0.0
    #: client operation every [lo, hi] ms; share of reads
    client_every_ms: tuple[int, int] = (4, 30)
    read_share: float = 0.3
    #: local snapshot every [lo, hi] applied entries
    snapshot_every: tuple[int, int] = (15, 60)


_CALM_NET = NetConfig()
_LOSSY_NET = NetConfig(delay_min_ms=1, delay_max_ms=10, loss=0.08, dup=0.05, reorder=0.05, reorder_max_ms=80)

MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("calm", {}, net=_CALM_NET),
        Mix(
            "crash",
            {"crash": 3, "crash_fsync": 3, "crash_voter": 2, "crash_all": 1},
            fault_every_ms=(100, 400),
            fsync_instant=0.3,
            fsync_max_ms=25,
            fsync_stall=0.05,
            torn_writes=True,
            crash_after_vote=0.2,
            crash_after_commit=0.05,
        ),
        Mix(
            "partition",
            {"partition": 2, "one_way": 2, "isolate_leader": 3, "bridge": 2, "pause": 1},
            fault_every_ms=(150, 500),
        ),
        Mix("lossy", {"loss_burst": 1, "clock_jump": 1, "campaign": 0.5}, net=_LOSSY_NET),
        Mix(
            "membership",
            {"membership": 5, "transfer": 2, "crash": 1, "isolate_leader": 1, "pause": 1},
            fault_every_ms=(100, 400),
            snapshot_every=(8, 30),
        ),
        Mix("clock", {"clock_jump": 4, "pause": 2, "transfer": 1}, fault_every_ms=(100, 400)),
        Mix(
            "chaos",
            {
                "crash": 2,
                "crash_fsync": 2,
                "crash_voter": 1,
                "crash_all": 0.5,
                "partition": 1,
                "one_way": 1,
                "isolate_leader": 1.5,
                "bridge": 1,
                "loss_burst": 1,
                "clock_jump": 1,
                "pause": 1.5,
                "membership": 2,
                "transfer": 1,
                "campaign": 0.5,
            },
            fault_every_ms=(80, 300),
            net=NetConfig(delay_min_ms=1, delay_max_ms=8, loss=0.02, dup=0.02, reorder=0.02),
            fsync_instant=0.4,
            fsync_max_ms=20,
            fsync_stall=0.03,
            torn_writes=True,
            crash_after_vote=0.05,
            crash_after_commit=0.01,
            snapshot_every=(10, 40),
        ),
    )
}


class FaultInjector:
    def __init__(self, cluster: Cluster, mix: Mix) -> None:
        self.c = cluster
        self.mix = mix
        self.kinds = sorted(mix.weights)
        self.cum: list[float] = []
        total = 0.0
        for k in self.kinds:
            total += mix.weights[k]
            self.cum.append(total)
        self.total = total
        self.counts: Counter[str] = Counter()
        #: the network configuration to go back to after a loss burst
        self.base_net = mix.net

    def enabled(self) -> bool:
        return self.total > 0

    def next_delay(self) -> int:
        lo, hi = self.mix.fault_every_ms
        return self.c.rng.randint(lo, hi)

    def inject(self) -> None:
        k = self.kinds[bisect.bisect_right(self.cum, self.c.rng.random() * self.total)]
        if getattr(self, "_" + k)() is not False:
            self.counts[k] += 1

    # ------------------------------------------------------------ crashes

    def _crash_budget(self) -> int:
        """How many more voters may go down without losing the quorum."""
        c = self.c
        voters = c.latest_voters()
        down = sum(1 for v in voters if v in c.nodes and not c.nodes[v].up and not c.nodes[v].retired)
        return (len(voters) - 1) // 2 - down

    def _restart_later(self, nid: str, lo: int, hi: int) -> None:
        self.c.schedule_restart(nid, self.c.rng.randint(lo, hi))

    def _crash(self) -> bool:
        c = self.c
        if self._crash_budget() <= 0:
            return False
        up = c.up_ids()
        if not up:
            return False
        victim = c.rng.choice(up)
        c.crash(victim)
        self._restart_later(victim, 10, 500)
        return True

    def crash_soon(self, nid: str) -> None:
        """Schedule a crash of ``nid`` within a few ms (a dangerous moment was reached)."""
        self.c.schedule_crash(nid, self.c.rng.randint(0, 3))

    def crash_moment(self, nid: str) -> bool:
        """The CRASH_SOON event: crash now if the quorum allows, restart soon."""
        if self._crash_budget() <= 0 or not self.c.nodes[nid].up:
            return False
        self.c.crash(nid)
        self._restart_later(nid, 1, 40)
        self.counts["crash_moment"] += 1
        return True

    def _crash_fsync(self) -> bool:
        c = self.c
        pending = [i for i in c.up_ids() if c.nodes[i].persisting]
        if not pending or self._crash_budget() <= 0:
            return False
        lead = c.leader_id(include_paused=True)
        # the leader is the most interesting victim: it may have counted acks before its own fsync
        victim = lead if lead in pending and c.rng.random() < 0.5 else c.rng.choice(pending)
        c.crash(victim)
        self._restart_later(victim, 5, 300)
        return True

    def _crash_voter(self) -> bool:
        c = self.c
        recent = [i for i in c.recent_voters if i in c.nodes and c.nodes[i].up]
        if not recent or self._crash_budget() <= 0:
            return False
        victim = c.rng.choice(sorted(set(recent)))
        c.crash(victim)
        self._restart_later(victim, 1, 30)
        return True

    def _crash_all(self) -> bool:
        c = self.c
        up = c.up_ids()
        if not up:
            return False
        for i in up:
            c.crash(i)
        for i in up:
            self._restart_later(i, 5, 400)
        return True

    # ------------------------------------------------------------ network

    def _heal_later(self) -> None:
        self.c.schedule_heal(self.c.rng.randint(100, 900))

    def _split(self) -> tuple[list[str], list[str]]:
        ids = self.c.up_ids()
        self.c.rng.shuffle(ids)
        k = self.c.rng.randint(1, max(1, len(ids) - 1))
        return ids[:k], ids[k:]

    def _partition(self) -> bool:
        a, b = self._split()
        if not a or not b:
            return False
        self.c.cut(partition.symmetric([a, b]))
        self._heal_later()
        return True

    def _one_way(self) -> bool:
        a, b = self._split()
        if not a or not b:
            return False
        self.c.cut(partition.one_way(a, b))
        self._heal_later()
        return True

    def _isolate_leader(self) -> bool:
        lead = self.c.leader_id()
        if lead is None:
            return False
        others = [i for i in self.c.all_ids() if i != lead]
        self.c.cut(partition.isolate(lead, others))
        self._heal_later()
        return True

    def _bridge(self) -> bool:
        ids = self.c.up_ids()
        if len(ids) < 3:
            return False
        self.c.rng.shuffle(ids)
        mid = ids[0]
        lead = self.c.leader_id()
        if lead is not None and self.c.rng.random() < 0.5:
            mid = lead  # the leader is the bridge: the two sides only see it
            ids.remove(lead)
            ids.insert(0, lead)
        rest = ids[1:]
        k = self.c.rng.randint(1, len(rest) - 1)
        self.c.cut(partition.bridge(rest[:k], mid, rest[k:]))
        self._heal_later()
        return True

    def _loss_burst(self) -> bool:
        c = self.c
        base = self.base_net
        c.net.config = NetConfig(
            delay_min_ms=base.delay_min_ms,
            delay_max_ms=base.delay_max_ms + 10,
            loss=c.rng.choice([0.2, 0.4]),
            dup=0.15,
            reorder=0.15,
            reorder_max_ms=120,
        )
        c.schedule_net_restore(c.rng.randint(100, 600))
        return True

    # ------------------------------------------------------------ clocks and pauses

    def _clock_jump(self) -> bool:
        c = self.c
        up = c.up_ids()
        if not up:
            return False
        n = c.nodes[c.rng.choice(up)]
        jump = c.rng.randint(1_000, 120_000) * c.rng.choice([-1, 1])
        n.clock_offset_ms += jump
        c.note("fault", f"clock of {n.id} jumps {jump:+d} ms")
        return True

    def _pause(self) -> bool:
        c = self.c
        up = [i for i in c.up_ids() if c.nodes[i].paused_until <= c.now]
        if not up:
            return False
        lead = c.leader_id()
        nid = lead if lead in up and c.rng.random() < 0.6 else c.rng.choice(up)
        assert nid is not None
        c.pause(nid, c.rng.randint(50, 700))
        return True

    # ------------------------------------------------------------ cluster operations

    def _membership(self) -> bool:
        c = self.c
        lead = c.leader_id()
        if lead is None:
            return False
        core = c.nodes[lead].raft()
        m = core.membership
        rng = c.rng
        base = c.n_initial
        if m.learners:
            target = sorted(m.learners)[0]
            op = ConfChangeOp.PROMOTE if rng.random() < 0.85 else ConfChangeOp.REMOVE
            cc = ConfChange(op, target)
        elif len(m.voters) > base or (base >= 5 and len(m.voters) == base and rng.random() < 0.3):
            voters = sorted(m.voters)
            target = lead if rng.random() < 0.35 else rng.choice(voters)
            cc = ConfChange(ConfChangeOp.REMOVE, target)
        else:
            cc = ConfChange(ConfChangeOp.ADD_LEARNER, c.next_node_id(), address="sim")
        return c.propose_conf_change(lead, cc)

    def _transfer(self) -> bool:
        c = self.c
        lead = c.leader_id()
        if lead is None:
            return False
        voters = sorted(v for v in c.nodes[lead].raft().membership.voters if v != lead)
        if not voters:
            return False
        target = c.rng.choice(voters)
        try:
            c.nodes[lead].raft().transfer_leadership(target)
        except (RaftError, ValueError):
            return False
        c.note("fault", f"transfer leadership {lead} -> {target}")
        c.after_input(c.nodes[lead])
        return True

    def _campaign(self) -> bool:
        c = self.c
        cands = [i for i in c.up_ids() if c.nodes[i].raft().role in (Role.FOLLOWER, Role.PRE_CANDIDATE)]
        if not cands:
            return False
        nid = c.rng.choice(cands)
        c.nodes[nid].raft().campaign()
        c.note("fault", f"{nid} campaigns")
        c.after_input(c.nodes[nid])
        return True
