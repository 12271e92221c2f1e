"""A tiny synchronous network of RaftNodes for rule-by-rule unit tests (like etcd's raft_test.go
``network``). Persistence is instant and perfect; messages are delivered when the test says so.
The seeded simulator in tests/sim/ is the place for faults and randomness."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from raftstate.raft import (
    Entry,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    PersistedState,
    RaftNode,
    RaftSettings,
    ReadState,
    Role,
    SnapshotMeta,
)

SETTINGS = RaftSettings(heartbeat_ticks=1, election_ticks=10)


@dataclass
class Disk:
    """What one node has durably stored."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass
class Peer:
    node: RaftNode
    disk: Disk
    applied: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    dropped_reads: list[object] = field(default_factory=list)


class Net:
    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        *,
        settings: RaftSettings = SETTINGS,
        seed: int = 1,
        node_factory: Callable[..., RaftNode] = RaftNode,
        learners: Iterable[str] = (),
    ) -> None:
        self.ids = list(ids)
        self.settings = settings
        self.seed = seed
        self.factory = node_factory
        self.bootstrap = Membership(frozenset(self.ids), frozenset(learners))
        self.peers: dict[str, Peer] = {}
        self.inbox: list[Message] = []
        #: (src, dst) pairs whose messages are dropped
        self.cut: set[tuple[str, str]] = set()
        self.now_ms = 0
        self.sent: list[Message] = []
        for i in [*self.ids, *learners]:
            self.start(i)

    # ------------------------------------------------------------- lifecycle

    def start(self, nid: str, disk: Disk | None = None, bootstrap: Membership | None = None) -> Peer:
        disk = disk or Disk()
        node = self.factory(
            nid,
            bootstrap=bootstrap or self.bootstrap,
            state=disk.persisted(),
            settings=self.settings,
            rng=random.Random(f"{self.seed}-{nid}"),
            now_ms=self.now_ms,
        )
        self.peers[nid] = Peer(node, disk)
        return self.peers[nid]

    def restart(self, nid: str) -> Peer:
        return self.start(nid, self.peers[nid].disk)

    def node(self, nid: str) -> RaftNode:
        return self.peers[nid].node

    # ------------------------------------------------------------- driving

    def process(self, nid: str) -> None:
        """Run one node's Ready loop until it has nothing more to say."""
        p = self.peers[nid]
        while p.node.has_ready():
            rd = p.node.ready()
            if rd.snapshot is not None:
                p.disk.snapshot = rd.snapshot.meta
                p.disk.snapshot_data = rd.snapshot.data
                p.disk.entries = []
            if rd.entries:
                first = rd.entries[0].index
                p.disk.entries = [e for e in p.disk.entries if e.index < first] + list(rd.entries)
            if rd.hard_state is not None:
                p.disk.hard_state = rd.hard_state
            for out in rd.messages:
                msg = out.msg
                if isinstance(msg, InstallSnapshot):
                    msg = replace(msg, data=p.disk.snapshot_data)
                self.sent.append(msg)
                if (msg.src, msg.dst) not in self.cut:
                    self.inbox.append(msg)
            p.applied.extend(rd.committed)
            p.reads.extend(rd.reads)
            p.dropped_reads.extend(rd.dropped_reads)
            p.node.advance(rd)

    def deliver(self, limit: int = 100_000, only: Callable[[Message], bool] | None = None) -> int:
        """Process every node, then deliver messages until quiet. Returns messages delivered."""
        n = 0
        for nid in self.peers:
            self.process(nid)
        while self.inbox and n < limit:
            msg = self.inbox.pop(0)
            if only is not None and not only(msg):
                continue
            if msg.dst in self.peers and (msg.src, msg.dst) not in self.cut:
                self.peers[msg.dst].node.step(msg)
                self.process(msg.dst)
                n += 1
        return n

    def tick(self, nid: str | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.now_ms += 10
            for i in [nid] if nid else list(self.peers):
                self.peers[i].node.tick(self.now_ms)
                self.process(i)

    def elect(self, nid: str) -> None:
        self.node(nid).campaign()
        self.deliver()
        assert self.node(nid).role == Role.LEADER, f"{nid} did not win: {self.node(nid).role}"

    def propose(self, nid: str, data: bytes) -> int:
        idx = self.node(nid).propose(data, self.now_ms)
        self.deliver()
        return idx

    def isolate(self, nid: str) -> None:
        for o in self.peers:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def heal(self) -> None:
        self.cut.clear()

    def leader(self) -> str | None:
        leaders = [i for i, p in self.peers.items() if p.node.role == Role.LEADER]
        return max(leaders, key=lambda i: self.peers[i].node.term) if leaders else None

    def applied_data(self, nid: str) -> list[bytes]:
        return [e.data for e in self.peers[nid].applied if e.data]
