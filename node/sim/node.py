"""One simulated server: a RaftNode plus what a real process keeps beside it.

The core is rebuilt from :attr:`SimNode.disk` on every restart, with a new Ready driver (the shared
one of :mod:`raftstate.raft.testing.driver`); everything else here that is not the disk (state
machine, in-flight persist, client bookkeeping) is volatile and lost by a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftstate.node.sim.statemachine import KVStateMachine
from raftstate.raft import Membership, RaftNode, ReadState
from raftstate.raft.testing import MemDisk, ReadyDriver


@dataclass(slots=True)
class SimNode:
    id: str
    #: the membership the process is started with (the initial cluster; kept across restarts)
    bootstrap: Membership
    #: added to the cluster's time to give this node's wall clock (jumps change it)
    clock_offset_ms: int
    #: this node's tick period (clocks drift a little: not every node ticks at the same rate)
    tick_ms: int
    #: take a local snapshot once this many entries were applied since the last one
    snapshot_every: int
    disk: MemDisk = field(default_factory=MemDisk)
    core: RaftNode | None = None
    #: the driver of this incarnation's core (None while the node is down)
    driver: ReadyDriver | None = None
    sm: KVStateMachine = field(default_factory=KVStateMachine)
    incarnation: int = 0
    alive: bool = False
    #: removed from the cluster and shut down for good
    retired: bool = False
    #: a process freeze (GC pause, VM migration): nothing happens on the node until then
    paused_until: int = 0
    #: take the next Ready while earlier ones wait for their fsync (as node/driver.py does), or
    #: handle one Ready at a time
    pipeline: bool = True
    #: how many batches at the head of the driver's queue the running fsync covers (0: none running)
    syncing: int = 0
    #: when this node last became leader (simulated ms)
    leader_since: int = 0
    #: commit index already checked by invariants.commit_safety in this incarnation
    seen_commit: int = 0
    #: proposals accepted by this incarnation: index -> data
    pending_writes: dict[int, bytes] = field(default_factory=dict)
    #: reads released by the core but not yet servable (applied index behind)
    waiting_reads: list[ReadState] = field(default_factory=list)
    #: ctx of the reads started on this incarnation
    open_reads: set[object] = field(default_factory=set)

    @property
    def persisting(self) -> bool:
        return self.driver is not None and bool(self.driver.queue)

    def wall_ms(self, now: int) -> int:
        return now + self.clock_offset_ms

    @property
    def up(self) -> bool:
        return self.alive and not self.retired

    def raft(self) -> RaftNode:
        assert self.core is not None, f"{self.id} is not running"
        return self.core

    def ready_driver(self) -> ReadyDriver:
        assert self.driver is not None, f"{self.id} is not running"
        return self.driver
