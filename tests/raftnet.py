"""A tiny synchronous network of RaftNodes for rule-by-rule unit tests (like etcd's raft_test.go
``network``). Persistence is instant and perfect; messages are delivered when the test says so.
The seeded simulator in node/sim/ is the place for faults and randomness.

Built on the shared raft test kit (raft/testing/), as the simulator is: each node's disk is a
:class:`MemDisk`, its Readys go through a :class:`ReadyDriver` (persist → send → apply → advance;
InstallSnapshot filled from the disk), and partitions are the kit's :class:`Partition` builders
(``net.block(one_way("a", ["b", "c"]))``). What is left here is the net itself: the inbox, the
clock, and the state machine (every applied entry, in order).

Beyond the basics (``elect``, ``propose``, ``tick``, ``deliver``, ``block``/``isolate``/``heal``,
``restart``) the net offers the knobs the rule tests need, all deterministic:

* ``crash``/``restart``: a crashed node loses everything not on its :class:`MemDisk`, including a
  Ready whose persistence was held back; ``restart`` rebuilds the core *and* the state machine
  (from the snapshot on disk, then by re-applying what the core hands out).
* ``hold``/``release``: hold back one node's persist step, as if its fsync were slow. Messages that
  may leave before the fsync (``after_persist=False``) still go out; the rest wait with the Ready.
* ``compact``: take an application snapshot (its data encodes the applied entries) and compact.
* ``deliver_where``/``drop``/``pending``: deliver or drop only some queued messages.
* ``clock_offset_ms``: a per-node clock skew for the leader-time rules.
* ``expire_leases``: a white-box shortcut for "these nodes have not heard from a leader for an
  election timeout", so a test can ``elect`` someone else without ticking every node.

With ``suppress_repeats=True``, ``deliver`` drops an entry-less AppendEntries that repeats one
already delivered on the same link during the same call (counted in ``suppressed``). Dropping is
legal (Raft tolerates loss), and it keeps a core that ping-pongs empty appends from spinning until
``limit``; it is off by default because it can also drop a legitimate re-probe.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from raftstate.raft import (
    AppendEntries,
    Entry,
    EntryKind,
    Membership,
    Message,
    RaftNode,
    RaftSettings,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)
from raftstate.raft.messages import entry_from_wire, entry_to_wire
from raftstate.raft.testing import Link, MemDisk, Partition, ReadyDriver, WriteBatch, isolate

SETTINGS = RaftSettings(heartbeat_ticks=1, election_ticks=10)


def encode_sm(applied: list[Entry]) -> bytes:
    """The harness state machine's snapshot: every applied entry, in order."""
    out: bytes = msgpack.packb([entry_to_wire(e) for e in applied], use_bin_type=True)
    return out


def decode_sm(data: bytes) -> list[Entry]:
    if not data:
        return []
    return [entry_from_wire(w) for w in msgpack.unpackb(data, raw=False)]


@dataclass
class Peer:
    node: RaftNode
    disk: MemDisk
    driver: ReadyDriver = field(init=False)
    #: the state machine: every entry applied, in order (rebuilt from the snapshot on restart/install)
    applied: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    dropped_reads: list[object] = field(default_factory=list)
    #: persistence is held (see Net.hold): every Ready waits in the driver until Net.release
    holding: bool = False

    @property
    def held(self) -> list[Ready]:
        """Readies taken while persistence is held, not yet persisted."""
        return [fl.ready for fl in self.driver.queue]

    def apply(self, rd: Ready) -> None:
        """The harness state machine's step of a Ready (see :meth:`Net.process`)."""
        if rd.snapshot is not None:
            self.applied = decode_sm(rd.snapshot.data)
        self.applied.extend(rd.committed)
        self.reads.extend(rd.reads)
        self.dropped_reads.extend(rd.dropped_reads)

    def persist_now(self, batch: WriteBatch) -> bool:
        return not self.holding


class Net:
    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        *,
        settings: RaftSettings = SETTINGS,
        seed: int = 1,
        node_factory: Callable[..., RaftNode] = RaftNode,
        learners: Iterable[str] = (),
        suppress_repeats: bool = False,
    ) -> None:
        self.ids = list(ids)
        self.settings = settings
        self.seed = seed
        self.factory = node_factory
        self.bootstrap = Membership(frozenset(self.ids), frozenset(learners))
        self.peers: dict[str, Peer] = {}
        self.inbox: list[Message] = []
        #: (src, dst) pairs whose messages are dropped (see :meth:`block`)
        self.cut: set[Link] = set()
        #: crashed nodes: they neither tick nor receive until restarted
        self.down: set[str] = set()
        self.now_ms = 0
        #: per-node clock skew: node ``i`` reads ``now_ms + clock_offset_ms.get(i, 0)``
        self.clock_offset_ms: dict[str, int] = {}
        #: every message sent, as the driver sends it (InstallSnapshot with its data filled in)
        self.sent: list[Message] = []
        #: every message exactly as the core emitted it
        self.core_sent: list[Message] = []
        self.suppress_repeats = suppress_repeats
        #: entry-less AppendEntries dropped as repeats (see the module docstring)
        self.suppressed = 0
        for i in [*self.ids, *learners]:
            self.start(i)

    # ------------------------------------------------------------- lifecycle

    def clock(self, nid: str) -> int:
        return self.now_ms + self.clock_offset_ms.get(nid, 0)

    def start(self, nid: str, disk: MemDisk | None = None, bootstrap: Membership | None = None) -> Peer:
        disk = disk or MemDisk()
        node = self.factory(
            nid,
            bootstrap=bootstrap or self.bootstrap,
            state=disk.persisted_state(),
            settings=self.settings,
            rng=random.Random(f"{self.seed}-{nid}"),
            now_ms=self.clock(nid),
        )
        p = Peer(node, disk, applied=decode_sm(disk.latest_snapshot_data() or b""))
        p.driver = ReadyDriver(node, disk, send=self._send, apply=p.apply, emitted=self.core_sent.append)
        self.peers[nid] = p
        self.down.discard(nid)
        return p

    def restart(self, nid: str, bootstrap: Membership | None = None) -> Peer:
        return self.start(nid, self.peers[nid].disk, bootstrap)

    def crash(self, nid: str) -> None:
        """Stop ``nid``: whatever it has not persisted is gone; messages to it are lost."""
        p = self.peers[nid]
        p.driver.crash()
        p.holding = False
        self.down.add(nid)
        self.inbox = [m for m in self.inbox if m.dst != nid]

    def node(self, nid: str) -> RaftNode:
        return self.peers[nid].node

    # ------------------------------------------------------------- the Ready loop

    def process(self, nid: str) -> None:
        """Run one node's Ready loop until it has nothing more to say. Each Ready is persisted at
        once, then its messages leave, then it is applied — unless persistence is held (:meth:`hold`):
        then messages that may leave before the fsync go now, and the rest waits for :meth:`release`."""
        p = self.peers[nid]
        if nid in self.down:
            return
        while p.driver.wants_ready():
            p.driver.take(p.node.ready(), p.persist_now)

    def _send(self, msg: Message) -> None:
        self.sent.append(msg)
        if (msg.src, msg.dst) not in self.cut:
            self.inbox.append(msg)

    def hold(self, nid: str) -> None:
        """From now on ``nid``'s persist step does not finish until :meth:`release`."""
        self.peers[nid].holding = True

    def release(self, nid: str) -> None:
        """Finish every held persist step of ``nid`` (in order), then run its Ready loop normally."""
        p = self.peers[nid]
        p.holding = False
        p.driver.finish()
        self.process(nid)

    # ------------------------------------------------------------- delivery

    def _deliverable(self, msg: Message) -> bool:
        return msg.dst in self.peers and msg.dst not in self.down and (msg.src, msg.dst) not in self.cut

    def deliver(self, limit: int = 100_000, only: Callable[[Message], bool] | None = None) -> int:
        """Process every node, then deliver messages until quiet. Returns messages delivered.
        Messages that ``only`` rejects are dropped (see :meth:`deliver_where` to keep them)."""
        return self._deliver(limit, only, keep_others=False)

    def deliver_where(self, pred: Callable[[Message], bool], limit: int = 100_000) -> int:
        """Deliver only the messages ``pred`` accepts (also those sent meanwhile); keep the rest queued."""
        return self._deliver(limit, pred, keep_others=True)

    def _deliver(self, limit: int, pred: Callable[[Message], bool] | None, *, keep_others: bool) -> int:
        n = 0
        seen: set[AppendEntries] = set()
        for nid in self.peers:
            self.process(nid)
        kept: list[Message] = []
        while self.inbox and n < limit:
            msg = self.inbox.pop(0)
            if pred is not None and not pred(msg):
                if keep_others:
                    kept.append(msg)
                continue
            if not self._deliverable(msg):
                continue
            if self.suppress_repeats and isinstance(msg, AppendEntries) and not msg.entries:
                if msg in seen:
                    self.suppressed += 1
                    continue
                seen.add(msg)
            self.peers[msg.dst].node.step(msg)
            self.process(msg.dst)
            n += 1
        self.inbox = kept + self.inbox
        return n

    def pending(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        return [m for m in self.inbox if pred is None or pred(m)]

    def drop(self, pred: Callable[[Message], bool] | None = None) -> int:
        """Remove queued messages (all, or those ``pred`` accepts). Returns how many."""
        before = len(self.inbox)
        self.inbox = [m for m in self.inbox if pred is not None and not pred(m)]
        return before - len(self.inbox)

    # ------------------------------------------------------------- time

    def tick(self, nid: str | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.now_ms += 10
            for i in [nid] if nid else list(self.peers):
                if i in self.down:
                    continue
                self.peers[i].node.tick(self.clock(i))
                self.process(i)

    def run(self, ticks: int, on_tick: Callable[[], None] | None = None) -> None:
        """Tick every live node ``ticks`` times, delivering everything after each tick."""
        for _ in range(ticks):
            self.tick()
            self.deliver()
            if on_tick is not None:
                on_tick()

    def expire_leases(self, *ids: str) -> None:
        """White-box: let ``ids`` (default: all but the leader) act as if an election timeout passed
        since they last heard from a leader, without firing their own election."""
        for i in ids or [i for i in self.peers if self.node(i).role != Role.LEADER]:
            n = self.node(i)
            n.election_elapsed = max(n.election_elapsed, self.settings.election_ticks)

    # ------------------------------------------------------------- shortcuts

    def elect(self, nid: str) -> None:
        self.node(nid).campaign()
        self.deliver()
        assert self.node(nid).role == Role.LEADER, f"{nid} did not win: {self.node(nid).role}"

    def propose(self, nid: str, data: bytes) -> int:
        idx = self.node(nid).propose(data, self.clock(nid))
        self.deliver()
        return idx

    def block(self, p: Partition) -> None:
        """Cut the links of ``p`` (adds to any cut already in place; :meth:`heal` undoes all)."""
        self.cut |= p.blocked

    def isolate(self, nid: str) -> None:
        self.block(isolate(nid, [o for o in self.peers if o != nid]))

    def heal(self) -> None:
        self.cut.clear()

    def compact(self, nid: str, index: int | None = None) -> SnapshotMeta:
        """Snapshot ``nid``'s state machine at ``index`` (default: applied) and compact its log."""
        p = self.peers[nid]
        index = p.node.applied_index if index is None else index
        meta = p.node.snapshot_meta(index)
        p.disk.store_snapshot(meta, encode_sm([e for e in p.applied if e.index <= index]), drop_log=False)
        p.node.compact(index)
        return meta

    def leader(self) -> str | None:
        leaders = [i for i, p in self.peers.items() if p.node.role == Role.LEADER and i not in self.down]
        return max(leaders, key=lambda i: self.peers[i].node.term) if leaders else None

    def leaders_by_term(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for i, p in self.peers.items():
            if p.node.role == Role.LEADER:
                out.setdefault(p.node.term, set()).add(i)
        return out

    def applied_data(self, nid: str) -> list[bytes]:
        return [e.data for e in self.peers[nid].applied if e.data]

    def commands(self, nid: str) -> list[bytes]:
        """The data of every applied NORMAL entry (no no-ops, no configuration entries)."""
        return [e.data for e in self.peers[nid].applied if e.kind == EntryKind.NORMAL]

    def log(self, nid: str) -> list[tuple[int, int]]:
        """``(index, term)`` of every entry in ``nid``'s in-memory log (after its snapshot)."""
        return [(e.index, e.term) for e in self.node(nid).log.entries]


def is_msg(*types: type, src: str | None = None, dst: str | None = None) -> Callable[[Message], bool]:
    """A message predicate for ``deliver_where``/``drop``/``pending``: any of ``types`` (all when
    empty), optionally only from ``src`` and/or to ``dst``."""

    def pred(m: Message) -> bool:
        return (
            (not types or isinstance(m, types))
            and (src is None or m.src == src)
            and (dst is None or m.dst == dst)
        )

    return pred
