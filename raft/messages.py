"""Wire and log types of the core: small frozen dataclasses that round-trip through msgpack.

Every RPC carries ``term``, ``src`` and ``dst``. Replies carry what they answer (indexes taken
from the *request*, never from the leader's current view) so that duplicated or reordered replies
are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias, get_args

import msgpack


class EntryKind(IntEnum):
    NORMAL = 0  #: application command (opaque bytes)
    NOOP = 1  #: appended by every new leader; commits its term (Raft §5.4.2, §8)
    CONFIG = 2  #: a ConfChange, msgpack-encoded in ``data``; takes effect when appended (§4.1)


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    #: leader-assigned cluster time (ms). Non-decreasing along every log (see RaftNode._stamp).
    time_ms: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class ConfChangeOp(IntEnum):
    ADD_LEARNER = 0  #: replicate to it, no vote
    PROMOTE = 1  #: learner -> voter (or add directly as a voter)
    REMOVE = 2  #: voter or learner leaves (the leader included)


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfChangeOp
    node_id: str
    #: opaque to the core; the node layer keeps peer addresses here
    address: str = ""

    def encode(self, result: Membership) -> bytes:
        """A CONFIG entry's data: the change and the *whole* membership it results in. Carrying the
        result makes every config entry self-contained: a node replaying the log (a new member that
        joined knowing nobody) learns the full membership from the first config entry it applies,
        instead of applying deltas to a starting point it never had."""
        out: bytes = msgpack.packb([int(self.op), self.node_id, self.address, result.to_wire()])
        return out

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        return cls.decode_with_result(data)[0]

    @classmethod
    def decode_with_result(cls, data: bytes) -> tuple[ConfChange, Membership]:
        op, node_id, address, result = msgpack.unpackb(data)
        return cls(ConfChangeOp(op), str(node_id), str(address)), Membership.from_wire(result)


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters and learners; disjoint sets. ``addresses`` is opaque node-layer context."""

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()
    addresses: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is either voter or learner"

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def address_of(self, node_id: str) -> str | None:
        return dict(self.addresses).get(node_id)

    def apply(self, cc: ConfChange) -> Membership:
        voters, learners = set(self.voters), set(self.learners)
        addrs = dict(self.addresses)
        if cc.op == ConfChangeOp.ADD_LEARNER:
            if cc.node_id not in voters:
                learners.add(cc.node_id)
        elif cc.op == ConfChangeOp.PROMOTE:
            learners.discard(cc.node_id)
            voters.add(cc.node_id)
        else:
            voters.discard(cc.node_id)
            learners.discard(cc.node_id)
            addrs.pop(cc.node_id, None)
        if cc.address and cc.op != ConfChangeOp.REMOVE:
            addrs[cc.node_id] = cc.address
        return Membership(frozenset(voters), frozenset(learners), tuple(sorted(addrs.items())))

    def to_wire(self) -> list[Any]:
        return [sorted(self.voters), sorted(self.learners), [list(a) for a in self.addresses]]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Membership:
        voters, learners, addresses = w
        if not (isinstance(voters, list) and isinstance(learners, list) and isinstance(addresses, list)):
            raise ValueError("membership voters, learners and addresses must be arrays")
        ids = [*voters, *learners, *(a for a, _ in addresses)]
        if not all(isinstance(x, str) for x in ids) or not all(isinstance(b, str) for _, b in addresses):
            raise ValueError("membership ids and addresses must be strings")
        return cls(frozenset(voters), frozenset(learners), tuple((a, b) for a, b in addresses))


@dataclass(frozen=True, slots=True)
class HardState:
    """Must be durable before any message that depends on it leaves the node."""

    term: int = 0
    vote: str | None = None
    commit: int = 0  #: persisted lazily; only speeds up recovery, never needed for safety


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    membership: Membership
    #: cluster time of the last entry the snapshot covers
    time_ms: int = 0


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class RequestVote:
    TYPE: ClassVar[int] = 1
    term: int  #: for a pre-vote, the term the candidate *would* use (its term + 1)
    src: str
    dst: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    #: set by a TimeoutNow-triggered election: voters skip the leader-lease check (§3.10)
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResp:
    TYPE: ClassVar[int] = 2
    term: int
    src: str
    dst: str
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    TYPE: ClassVar[int] = 3
    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResp:
    TYPE: ClassVar[int] = 4
    term: int
    src: str
    dst: str
    success: bool
    #: on success: prev_index + len(entries) of the request answered (never the follower's last index)
    #: on reject: the prev_index of the rejected request
    index: int
    #: on reject: a hint for fast backtracking — the follower's last index, or the first index of
    #: the conflicting term (§5.3 "optimization"), plus that term (0 when the log is too short)
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[int] = 5
    term: int
    src: str
    dst: str
    #: min(follower's match, leader commit): always safe for the follower to commit up to
    commit: int
    #: read round: the follower echoes it so ReadIndex can count a quorum of acknowledgements
    seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatResp:
    TYPE: ClassVar[int] = 6
    term: int
    src: str
    dst: str
    seq: int
    #: non-zero only from a follower whose log ends below the commit index the leader sent it —
    #: it lost acknowledged entries (wiped disk); this is its last index + 1
    lost_data_next_index: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    TYPE: ClassVar[int] = 7
    term: int
    src: str
    dst: str
    meta: SnapshotMeta
    #: the core emits b""; the driver fills in the application's snapshot bytes before sending
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class InstallSnapshotResp:
    TYPE: ClassVar[int] = 8
    term: int
    src: str
    dst: str
    #: how far the follower's log now matches the leader's: the snapshot's index, or its own
    #: commit index when that already reached past the snapshot (a follower never refuses one)
    index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    TYPE: ClassVar[int] = 9
    term: int
    src: str
    dst: str


Message: TypeAlias = (
    RequestVote
    | RequestVoteResp
    | AppendEntries
    | AppendEntriesResp
    | Heartbeat
    | HeartbeatResp
    | InstallSnapshot
    | InstallSnapshotResp
    | TimeoutNow
)

#: wire type code -> message class, read off the Message union: a class added there is decodable
#: without a second list to forget (its TYPE code must be new: checked below)
_BY_TYPE: dict[int, type[Any]] = {c.TYPE: c for c in get_args(Message)}
assert len(_BY_TYPE) == len(get_args(Message)), "two message classes share a TYPE code"


# --------------------------------------------------------------------------- codec


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.index, e.term, e.time_ms, int(e.kind), e.data]


def entry_from_wire(w: list[Any]) -> Entry:
    index, term, time_ms, kind, data = w
    if not all(type(x) is int for x in (index, term, time_ms)) or not isinstance(data, bytes):
        raise ValueError(f"entry fields have wrong types: {[type(x).__name__ for x in w]}")
    return Entry(index, term, time_ms, EntryKind(kind), data)


def meta_to_wire(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, m.membership.to_wire(), m.time_ms]


def meta_from_wire(w: list[Any]) -> SnapshotMeta:
    index, term, membership, time_ms = w
    if not all(type(x) is int for x in (index, term, time_ms)):
        raise ValueError("snapshot metadata index, term and time must be integers")
    return SnapshotMeta(index, term, Membership.from_wire(membership), time_ms)


def _field_to_wire(v: Any) -> Any:
    if isinstance(v, SnapshotMeta):
        return meta_to_wire(v)
    if isinstance(v, tuple):
        return [entry_to_wire(e) for e in v]
    return v


def message_to_wire(msg: Message) -> list[Any]:
    return [msg.TYPE, *(_field_to_wire(getattr(msg, f.name)) for f in fields(msg))]


# Annotation text -> the Python types a decoded field may have (messages use postponed annotations,
# so a field's type is its source text). Every message field must be one of these or compound.
_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "bytes": (bytes,),
    "str | None": (str, type(None)),
}
_COMPOUND = {"entries", "meta"}


def _field_table(cls: type[Any]) -> dict[str, tuple[type, ...]]:
    table: dict[str, tuple[type, ...]] = {}
    for f in fields(cls):
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if text in _SCALARS:
            table[f.name] = _SCALARS[text]
        else:
            # A new kind of field needs a check here before it may cross the trust boundary.
            assert f.name in _COMPOUND, f"no wire check for {cls.__name__}.{f.name}: {text}"
    return table


_FIELDS: dict[type[Any], dict[str, tuple[type, ...]]] = {c: _field_table(c) for c in _BY_TYPE.values()}


def _check_fields(msg: Message) -> None:
    """Types and ranges of a decoded message: the core must never see a message that could crash
    it or be misread (a string "no" is truthy; a float index; a negative term)."""
    name_of = type(msg).__name__
    for name, types in _FIELDS[type(msg)].items():
        value = getattr(msg, name)
        # bool is an int subclass: a True where a term belongs is as wrong as a string
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{name_of}.{name} has type {type(value).__name__}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{name_of}.{name} is negative ({value})")
    if isinstance(msg, AppendEntries):
        # A slice of a leader's log: contiguous after prev, terms from prev_term up, cluster times
        # never decreasing. The core asserts the same order on its own log; refusing it here keeps
        # a buggy peer's message from ever reaching those assertions.
        expect, term, time_ms = msg.prev_index + 1, msg.prev_term, 0
        for pos, e in enumerate(msg.entries):
            if e.index != expect or e.term < term or e.time_ms < time_ms:
                raise ValueError(
                    f"AppendEntries entries must run from prev_index+1 upwards with terms from "
                    f"prev_term up and non-decreasing times; got index {e.index} term {e.term} "
                    f"time {e.time_ms} at position {pos}"
                )
            expect, term, time_ms = expect + 1, e.term, e.time_ms
    if isinstance(msg, InstallSnapshot):
        m = msg.meta
        if min(m.index, m.term, m.time_ms) < 0 or not all(isinstance(x, str) for x in m.membership.members):
            raise ValueError("InstallSnapshot.meta is malformed")


def message_from_wire(w: list[Any]) -> Message:
    """Inverse of :func:`message_to_wire`. Raises ValueError on anything malformed — this is the
    trust boundary for peer input: shapes, field types and ranges are all checked here."""
    try:
        if type(w[0]) is not int:
            raise ValueError(f"message type must be an integer, got {type(w[0]).__name__}")
        cls = _BY_TYPE.get(w[0])
        if cls is None:
            known = ", ".join(map(str, sorted(_BY_TYPE)))
            raise ValueError(
                f"unknown message type {w[0]} (this node knows types {known}): "
                "is the sender running an incompatible version?"
            )
        args = list(w[1:])
        names = [f.name for f in fields(cls)]
        if len(args) != len(names):
            raise ValueError(f"{cls.__name__} takes {len(names)} fields, got {len(args)}")
        kw = dict(zip(names, args, strict=True))
        if "entries" in kw:
            kw["entries"] = tuple(entry_from_wire(e) for e in kw["entries"])
        if "meta" in kw:
            kw["meta"] = meta_from_wire(kw["meta"])
        if "entries" in kw and not isinstance(w[1 + names.index("entries")], list):
            raise ValueError("entries must be an array")
        msg: Message = cls(**kw)
        _check_fields(msg)
    except (KeyError, IndexError, TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"malformed raft message: {exc}") from exc
    return msg


def encode_message(msg: Message) -> bytes:
    out: bytes = msgpack.packb(message_to_wire(msg), use_bin_type=True)
    return out


def decode_message(data: bytes) -> Message:
    try:
        w = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"malformed raft message: not msgpack ({exc})") from exc
    if not isinstance(w, list) or not w:
        raise ValueError("malformed raft message: expected a non-empty array")
    return message_from_wire(w)
