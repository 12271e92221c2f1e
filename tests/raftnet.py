"""A tiny synchronous network of RaftNodes for rule-by-rule unit tests (like etcd's raft_test.go
``network``). Persistence is instant and perfect; messages are delivered when the test says so.
The seeded simulator in raft/sim/ is the place for faults and randomness.

Beyond the basics (``elect``, ``propose``, ``tick``, ``deliver``, ``isolate``/``cut``, ``restart``)
the net offers the knobs the rule tests need, all deterministic:

* ``crash``/``restart``: a crashed node loses everything not on its :class:`Disk`, including a
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
from dataclasses import dataclass, field, replace

import msgpack

from raftstate.raft import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    PersistedState,
    RaftNode,
    RaftSettings,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)
from raftstate.raft.messages import entry_from_wire, entry_to_wire

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
    disk: Disk
    #: the state machine: every entry applied, in order (rebuilt from the snapshot on restart/install)
    applied: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    dropped_reads: list[object] = field(default_factory=list)
    #: Readies handed out while persistence is held (see Net.hold); persisted by Net.release
    held: list[Ready] = field(default_factory=list)
    holding: bool = False


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
        #: (src, dst) pairs whose messages are dropped
        self.cut: set[tuple[str, str]] = set()
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

    def start(self, nid: str, disk: Disk | None = None, bootstrap: Membership | None = None) -> Peer:
        disk = disk or Disk()
        node = self.factory(
            nid,
            bootstrap=bootstrap or self.bootstrap,
            state=disk.persisted(),
            settings=self.settings,
            rng=random.Random(f"{self.seed}-{nid}"),
            now_ms=self.clock(nid),
        )
        self.peers[nid] = Peer(node, disk, applied=decode_sm(disk.snapshot_data) if disk.snapshot else [])
        self.down.discard(nid)
        return self.peers[nid]

    def restart(self, nid: str, bootstrap: Membership | None = None) -> Peer:
        return self.start(nid, self.peers[nid].disk, bootstrap)

    def crash(self, nid: str) -> None:
        """Stop ``nid``: whatever it has not persisted is gone; messages to it are lost."""
        p = self.peers[nid]
        p.held.clear()
        p.holding = False
        self.down.add(nid)
        self.inbox = [m for m in self.inbox if m.dst != nid]

    def node(self, nid: str) -> RaftNode:
        return self.peers[nid].node

    # ------------------------------------------------------------- the Ready loop

    def process(self, nid: str) -> None:
        """Run one node's Ready loop until it has nothing more to say."""
        p = self.peers[nid]
        if nid in self.down:
            return
        while p.node.has_ready():
            rd = p.node.ready()
            if p.holding:
                # Messages that may leave before the fsync go now; the rest wait for release().
                self._send(p, [o.msg for o in rd.messages if not o.after_persist])
                p.held.append(rd)
                continue
            self._complete(p, rd)

    def _complete(self, p: Peer, rd: Ready, *, sent_early: bool = False) -> None:
        self._persist(p, rd)
        self._send(p, [o.msg for o in rd.messages if not (sent_early and not o.after_persist)])
        p.applied.extend(rd.committed)
        p.reads.extend(rd.reads)
        p.dropped_reads.extend(rd.dropped_reads)
        p.node.advance(rd)

    def _persist(self, p: Peer, rd: Ready) -> None:
        if rd.snapshot is not None:
            p.disk.snapshot = rd.snapshot.meta
            p.disk.snapshot_data = rd.snapshot.data
            p.disk.entries = []
            p.applied = decode_sm(rd.snapshot.data)
        if rd.entries:
            first = rd.entries[0].index
            p.disk.entries = [e for e in p.disk.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            p.disk.hard_state = rd.hard_state

    def _send(self, p: Peer, msgs: list[Message]) -> None:
        for msg in msgs:
            self.core_sent.append(msg)
            if isinstance(msg, InstallSnapshot):
                msg = replace(msg, data=p.disk.snapshot_data)
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
        held, p.held = p.held, []
        for rd in held:
            self._complete(p, rd, sent_early=True)
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

    def isolate(self, nid: str) -> None:
        for o in self.peers:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes talk only within their group (adds to any cut already in place)."""
        gs = [set(g) for g in groups]
        for i, ga in enumerate(gs):
            for j, gb in enumerate(gs):
                if i != j:
                    self.cut |= {(a, b) for a in ga for b in gb}

    def heal(self) -> None:
        self.cut.clear()

    def compact(self, nid: str, index: int | None = None) -> SnapshotMeta:
        """Snapshot ``nid``'s state machine at ``index`` (default: applied) and compact its log."""
        p = self.peers[nid]
        index = p.node.applied_index if index is None else index
        meta = p.node.snapshot_meta(index)
        p.disk.snapshot = meta
        p.disk.snapshot_data = encode_sm([e for e in p.applied if e.index <= index])
        p.disk.entries = [e for e in p.disk.entries if e.index > index]
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
