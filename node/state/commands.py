"""The commands carried in the Raft log: their schema, encoding, validation and cross-field rules.

A command is a msgpack map ``{"op": NAME, field: value, ...}`` in a NORMAL entry. The API layer
builds one from an HTTP request, validates it with :func:`encode` (which refuses garbage before it
is ever proposed), and the state machine decodes it with :func:`decode` at apply time. Both run the
same checks, so a command that reaches the log from an older or broken proposer is refused the same
way on every replica — deterministically, without raising. Either way the answer is a
:class:`~raftstate.node.errors.Refusal`, the one refusal type the API answers with too.

Each rule between fields is written once, as a small function returning the problem (or None):
the ones only the node checks are here (:func:`one_condition`, :func:`session_needs_seq`,
:func:`ack_below_seq`) and node/api/schema.py calls them; the one the client checks too
(``one_expiry``) is in raftstate.client.protocol.

Only *constant* bounds are checked here (types, int64 ranges, durations). Size limits from
cluster.yaml (``max_key_bytes``, ...) are the API layer's job: they may differ between nodes, and
the state machine must not depend on any node's configuration.

Every write may carry two envelopes besides its operation:

    session, seq, ack     exactly-once (see sessions.py): the (session, seq) pair names the write
    fence_lock, fence_token
                          applied only while that lock is held with that token (keys only)

Times are integer milliseconds of cluster time (the leader-stamped ``Entry.time_ms``); the HTTP API
speaks seconds and converts at its edge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgpack

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DURATION_MS",
    "MAX_TIME_MS",
    "AcquireLock",
    "CloseSession",
    "Command",
    "DeleteKey",
    "Expire",
    "Fence",
    "ForceReleaseLock",
    "Increment",
    "KeepAlive",
    "OpenSession",
    "Operation",
    "ReleaseLock",
    "RenewLock",
    "SessionRef",
    "SetKey",
    "ack_below_seq",
    "decode",
    "describe_time",
    "encode",
    "invalid",
    "one_condition",
    "session_needs_seq",
    "to_seconds",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: longest ttl / idle timeout: ten years (keeps every expiry far inside int64 milliseconds)
MAX_DURATION_MS: Final = 10 * 365 * 86_400_000
#: latest absolute expiry: 9999-12-31T23:59:59.999Z
MAX_TIME_MS: Final = 253_402_300_799_999
#: most outcomes one session may be asked to remember (the setting is checked against this)
MAX_SESSION_RESULTS: Final = 1_000_000


def invalid(message: str, **fields: Any) -> Refusal:
    """An invalid_request refusal (400)."""
    return Refusal(p.INVALID_REQUEST, message, **fields)


# =========================================================================== operations


@dataclass(frozen=True, slots=True)
class SetKey:
    key: str
    value: Any
    ttl_ms: int | None = None  #: expires at the entry's time + ttl_ms
    expires_at_ms: int | None = None  #: or at this cluster time
    if_absent: bool = False  #: only if the key does not exist (or has expired)
    if_version: int | None = None  #: only if the key is at this version


@dataclass(frozen=True, slots=True)
class DeleteKey:
    key: str
    if_version: int | None = None


@dataclass(frozen=True, slots=True)
class Increment:
    key: str
    by: int = 1
    ttl_ms: int | None = None  #: None: the key keeps its expiry
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AcquireLock:
    name: str
    owner: str
    ttl_ms: int
    #: at most this many held locks (from the leader's settings.max_locks; absent: no limit). In the
    #: command, not the replica's config, so every replica refuses the same acquire.
    max_locks: int | None = None
    # Quotas (node/state/quotas.py), stamped by the leader's API like max_locks:
    max_ttl_ms: int | None = None  #: settings.max_lock_ttl_s: a longer ttl is refused
    caller: str | None = None  #: the NAME of the token that sent it (absent: auth off)
    max_per_caller: int | None = None  #: settings.max_locks_per_token (absent: admin, or auth off)


@dataclass(frozen=True, slots=True)
class RenewLock:
    name: str
    token: int
    ttl_ms: int | None = None  #: None: the ttl of the acquire
    max_ttl_ms: int | None = None  #: settings.max_lock_ttl_s (node/state/quotas.py)


@dataclass(frozen=True, slots=True)
class ReleaseLock:
    name: str
    token: int


@dataclass(frozen=True, slots=True)
class OpenSession:
    #: carried in the command (from the leader's settings) so that replicas never consult their own
    idle_timeout_ms: int
    max_results: int
    max_sessions: int | None = None  #: settings.max_sessions of the leader (absent: no limit)
    caller: str | None = None  #: the NAME of the token that opened it (absent: auth off)
    max_per_caller: int | None = None  #: settings.max_sessions_per_token (absent: admin, or auth off)


@dataclass(frozen=True, slots=True)
class ForceReleaseLock:
    """An admin frees a lock whoever holds it, whatever its token (node/api/admin.py)."""

    name: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    id: int  #: the session


@dataclass(frozen=True, slots=True)
class CloseSession:
    """The client is done with session ``id``: forget it and every outcome it remembers."""

    id: int
    #: the NAME of the token asking (absent: an admin token, or auth off): a session opened by
    #: another token is not closed (node/state/quotas.py)
    caller: str | None = None


@dataclass(frozen=True, slots=True)
class Expire:
    """The leader's sweep: remove these if they have expired at this entry's time. Carries no clock:
    apply re-checks every name against the entry's time_ms, so a stale list is harmless."""

    keys: tuple[str, ...] = ()
    locks: tuple[str, ...] = ()
    sessions: tuple[int, ...] = ()


Operation = (
    SetKey
    | DeleteKey
    | Increment
    | AcquireLock
    | RenewLock
    | ReleaseLock
    | ForceReleaseLock
    | OpenSession
    | KeepAlive
    | CloseSession
    | Expire
)


@dataclass(frozen=True, slots=True)
class SessionRef:
    """Exactly-once envelope: write number ``seq`` of session ``id``; outcomes up to ``ack`` are no
    longer needed. Invariant: 0 <= ack < seq."""

    id: int
    seq: int
    ack: int = 0


@dataclass(frozen=True, slots=True)
class Fence:
    lock: str
    token: int


@dataclass(frozen=True, slots=True)
class Command:
    op: Operation
    session: SessionRef | None = None
    fence: Fence | None = None


# =========================================================================== the schema, as a table

# A field kind is a check returning an error text (None: fine) and a converter.
Check = Callable[[Any], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def _any(v: Any) -> str | None:
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _int64(v: Any) -> str | None:
    return None if _is_int(v) and INT64_MIN <= v <= INT64_MAX else "a signed 64-bit integer"


def _index(v: Any) -> str | None:
    return None if _is_int(v) and 1 <= v <= INT64_MAX else "a positive integer"


def _count(v: Any) -> str | None:
    return None if _is_int(v) and 0 <= v <= INT64_MAX else "a non-negative integer"


def _duration(v: Any) -> str | None:
    ok = _is_int(v) and 1 <= v <= MAX_DURATION_MS
    return None if ok else f"a whole number of milliseconds in 1..{MAX_DURATION_MS} (ten years)"


def _time(v: Any) -> str | None:
    return None if _is_int(v) and 0 <= v <= MAX_TIME_MS else f"epoch milliseconds in 0..{MAX_TIME_MS}"


def _results(v: Any) -> str | None:
    return None if _is_int(v) and 1 <= v <= MAX_SESSION_RESULTS else f"an integer in 1..{MAX_SESSION_RESULTS}"


def _names(v: Any) -> str | None:
    ok = isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)
    return None if ok else "a list of strings"


def _indexes(v: Any) -> str | None:
    ok = isinstance(v, list | tuple) and all(_index(x) is None for x in v)
    return None if ok else "a list of positive integers"


#: op name -> (operation class, {field: kind}). Required fields are the dataclass fields without a
#: default; every other field is optional and may be absent (or null).
SCHEMA: Final[dict[str, tuple[type[Any], dict[str, Check]]]] = {
    "set": (
        SetKey,
        {
            "key": _name,
            "value": _any,
            "ttl_ms": _duration,
            "expires_at_ms": _time,
            "if_absent": _bool,
            "if_version": _index,
        },
    ),
    "delete": (DeleteKey, {"key": _name, "if_version": _index}),
    "incr": (Increment, {"key": _name, "by": _int64, "ttl_ms": _duration, "expires_at_ms": _time}),
    "lock_acquire": (
        AcquireLock,
        {
            "name": _name,
            "owner": _name,
            "ttl_ms": _duration,
            "max_locks": _index,
            "max_ttl_ms": _duration,
            "caller": _name,
            "max_per_caller": _index,
        },
    ),
    "lock_renew": (
        RenewLock,
        {"name": _name, "token": _index, "ttl_ms": _duration, "max_ttl_ms": _duration},
    ),
    "lock_force_release": (ForceReleaseLock, {"name": _name}),
    "lock_release": (ReleaseLock, {"name": _name, "token": _index}),
    "session_open": (
        OpenSession,
        {
            "idle_timeout_ms": _duration,
            "max_results": _results,
            "max_sessions": _index,
            "caller": _name,
            "max_per_caller": _index,
        },
    ),
    "session_keepalive": (KeepAlive, {"id": _index}),
    "session_close": (CloseSession, {"id": _index, "caller": _name}),
    "expire": (Expire, {"keys": _names, "locks": _names, "sessions": _indexes}),
}
OP_NAME: Final[dict[type[Any], str]] = {cls: name for name, (cls, _) in SCHEMA.items()}

_ENVELOPE: Final[dict[str, Check]] = {
    "session": _index,
    "seq": _index,
    "ack": _count,
    "fence_lock": _name,
    "fence_token": _index,
}
_SESSION_FIELDS: Final = frozenset({"session", "seq", "ack"})
_FENCE_FIELDS: Final = frozenset({"fence_lock", "fence_token"})
#: operations that change keys: the only ones a fence applies to
_FENCEABLE: Final = (SetKey, DeleteKey, Increment)
#: operations that may carry a session (every client write; not the session's own bookkeeping)
_NUMBERABLE: Final = (SetKey, DeleteKey, Increment, AcquireLock, RenewLock, ReleaseLock)


def _required(cls: type[Any]) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


_REQUIRED: Final = {name: _required(cls) for name, (cls, _) in SCHEMA.items()}


# =========================================================================== cross-field rules
# Rules between fields that only the node checks, each written once: the request schema
# (node/api/schema.py) calls them on a request's fields, _validate on a command's. Pure: the
# problem as text, or None when the fields agree. (raftstate.client.protocol.one_expiry is the
# rule the client checks too.)


def one_condition(if_absent: bool | None, if_version: int | None) -> str | None:
    """A write is conditional on the key's absence or on its version, not both."""
    if if_absent is True and if_version is not None:
        return "give if_absent or if_version, not both"
    return None


def session_needs_seq(session: int | None, seq: int | None, ack: int | None) -> str | None:
    """An exactly-once write names its session and its number in that session, or neither."""
    if (session, seq, ack) != (None, None, None) and (session is None or seq is None):
        return "a session write needs both session and seq (the session from POST /v1/sessions)"
    return None


def ack_below_seq(seq: int | None, ack: int | None) -> str | None:
    """0 <= ack < seq: a write cannot let go of its own outcome (ack absent: 0)."""
    if seq is not None and ack is not None and ack >= seq:
        return f"ack ({ack}) must be below seq ({seq}): a write's own outcome is still needed"
    return None


# =========================================================================== encode / decode


def encode(cmd: Command) -> bytes:
    """Validate ``cmd`` and return its log bytes. Raises a Refusal (invalid_request) for a command
    that apply would refuse as malformed — the API must never propose one — or that msgpack cannot
    carry (an integer beyond 64 bits, a lone surrogate in a string)."""
    m = _to_map(cmd)
    _validate(m)
    try:
        out: bytes = msgpack.packb(m, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"the request cannot be encoded: {exc}") from None
    return out


def decode(data: bytes) -> Command:
    """Parse and validate log bytes. Raises a Refusal (invalid_request), never anything else."""
    try:
        m = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise invalid(f"the command is not valid msgpack: {exc}") from None
    _validate(m)
    return _from_map(m)


def _to_map(cmd: Command) -> dict[str, Any]:
    op = cmd.op
    m: dict[str, Any] = {"op": OP_NAME[type(op)]}
    for f in fields(op):
        v = getattr(op, f.name)
        optional = f.default is not MISSING
        if optional and (v is None or v is False or (isinstance(v, tuple) and not v)):
            continue  # absent means the default
        m[f.name] = list(v) if isinstance(v, tuple) else v
    if cmd.session is not None:
        m["session"], m["seq"] = cmd.session.id, cmd.session.seq
        if cmd.session.ack:
            m["ack"] = cmd.session.ack
    if cmd.fence is not None:
        m["fence_lock"], m["fence_token"] = cmd.fence.lock, cmd.fence.token
    return m


def _validate(m: Any) -> None:
    if not isinstance(m, dict) or not isinstance(m.get("op"), str):
        raise invalid("a command must be a map with an 'op' string")
    name = m["op"]
    if name not in SCHEMA:
        raise invalid(f"unknown operation {name!r}; known: {', '.join(SCHEMA)}")
    cls, kinds = SCHEMA[name]
    for field, value in m.items():
        if field == "op":
            continue
        check = kinds.get(field) or _ENVELOPE.get(field)
        if check is None:
            raise invalid(f"{name}: unknown field {field!r}")
        if value is None:
            continue
        problem = check(value)
        if problem is not None:
            raise invalid(f"{name}: {field} must be {problem}, got {_show(value)}")
    for field in _REQUIRED[name]:
        if m.get(field) is None and not (field == "value" and "value" in m):
            raise invalid(f"{name}: missing field {field!r}")
    _cross_field_rules(name, cls, m)


def _cross_field_rules(name: str, cls: type[Any], m: dict[str, Any]) -> None:
    """Rules between fields, as a table in the order they are checked: the first problem refuses."""
    has = {k for k, v in m.items() if v is not None}
    problems: tuple[str | None, ...] = (
        p.one_expiry(m.get("ttl_ms"), m.get("expires_at_ms")),
        one_condition(m.get("if_absent"), m.get("if_version")),
        "a fence needs both the lock name and the token" if len(has & _FENCE_FIELDS) == 1 else None,
        "only writes to keys can be fenced" if "fence_lock" in has and cls not in _FENCEABLE else None,
        "this operation cannot carry a session" if has & _SESSION_FIELDS and cls not in _NUMBERABLE else None,
        session_needs_seq(m.get("session"), m.get("seq"), m.get("ack")),
        ack_below_seq(m.get("seq"), m.get("ack")),
    )
    for problem in problems:
        if problem is not None:
            raise invalid(f"{name}: {problem}")


def _from_map(m: dict[str, Any]) -> Command:
    cls, kinds = SCHEMA[m["op"]]
    args = {k: m[k] for k in kinds if m.get(k) is not None or (k == "value" and k in m)}
    for k in ("keys", "locks", "sessions"):
        if k in args:
            args[k] = tuple(args[k])
    session = None
    if m.get("session") is not None:
        session = SessionRef(m["session"], m["seq"], m.get("ack") or 0)
    fence = Fence(m["fence_lock"], m["fence_token"]) if m.get("fence_lock") is not None else None
    return Command(cls(**args), session, fence)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# =========================================================================== time on the wire


def to_seconds(ms: int | None) -> float | None:
    """Cluster time or a duration in ms as the API's seconds (None stays None)."""
    return None if ms is None else ms / 1000


def describe_time(ms: int) -> str:
    """Cluster time for messages: ISO 8601 UTC with milliseconds. Pure (no local time zone)."""
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
