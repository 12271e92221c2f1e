"""HTTP request bodies and query strings → validated, size-checked commands (docs/api.md).

Everything a request can get wrong is found here, before anything is proposed: unknown or missing
fields, wrong types, non-finite numbers, values msgpack or JSON cannot carry, and the size limits of
cluster.yaml (``max_key_bytes``, ``max_value_bytes``). Each error names the endpoint, the field or
limit, and what to send instead. The result is a :class:`~raftstate.node.state.commands.Command` whose
:func:`~raftstate.node.state.commands.encode` cannot fail for shape reasons.

Units: the API speaks seconds (ttl, expires_at as epoch seconds, fractions allowed); commands carry
integer milliseconds. A ttl is rounded up to the next millisecond (a ttl is never shortened).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION_MS,
    MAX_TIME_MS,
    AcquireLock,
    CloseSession,
    Command,
    DeleteKey,
    Fence,
    Increment,
    KeepAlive,
    OpenSession,
    Operation,
    ReleaseLock,
    RenewLock,
    SessionRef,
    SetKey,
    ack_below_seq,
    one_condition,
    session_needs_seq,
)

__all__ = [
    "MAX_LIST_LIMIT",
    "MAX_VALUE_DEPTH",
    "ApiLimits",
    "ListQuery",
    "acquire",
    "delete",
    "increment",
    "keepalive",
    "list_query",
    "name_from_path",
    "open_session",
    "put",
    "release",
    "renew",
    "stale_read",
    "timeout_s",
]

#: deepest nesting of lists/maps in a value (msgpack itself stops near 1000, and snapshots nest values)
MAX_VALUE_DEPTH: Final = 100
DEFAULT_LIST_LIMIT: Final = 1000
MAX_LIST_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class ApiLimits:
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    session_idle_timeout_ms: int = 3_600_000
    max_session_results: int = 1000
    max_keys_per_page: int = MAX_LIST_LIMIT
    max_sessions: int = 100_000
    max_locks: int = 100_000
    # Quotas (node/api/admission.py stamps them into commands); None: no such quota
    max_lock_ttl_ms: int | None = None
    max_locks_per_token: int | None = None
    max_sessions_per_token: int | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    prefix: str
    after: str | None
    limit: int


_SESSION_FIELDS: Final = frozenset({"session", "seq", "ack"})


# =========================================================================== endpoints


def put(key: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.KV_SET, key, body)
    if "value" not in b.raw:
        raise b.error('needs "value" (any JSON value, or msgpack value)', field="value")
    value = b.raw["value"]
    _check_value(b.what, value, lim)
    ttl_ms, expires_at_ms = b.expiry()
    if_absent = b.flag("if_absent")
    if_version = b.integer("if_version", 1, INT64_MAX, "a version (a positive integer from a read)")
    b.rule(one_condition(if_absent, if_version))
    op = SetKey(key, value, ttl_ms, expires_at_ms, if_absent, if_version)
    return b.command(op, lim)


def delete(key: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.KV_DELETE, key, body)
    if_version = b.integer("if_version", 1, INT64_MAX, "a version (a positive integer from a read)")
    return b.command(DeleteKey(key, if_version), lim)


def increment(key: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.KV_INCREMENT, key, body)
    by = b.integer("by", INT64_MIN, INT64_MAX, "a signed 64-bit integer")
    ttl_ms, expires_at_ms = b.expiry()
    return b.command(Increment(key, 1 if by is None else by, ttl_ms, expires_at_ms), lim)


def acquire(name: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.LOCK_ACQUIRE, name, body)
    owner = b.raw.get("owner")
    if not isinstance(owner, str) or not owner:
        raise b.error(
            f'"owner" must be a non-empty string naming the holder, got {_got(owner)}', field="owner"
        )
    if len(owner.encode("utf-8", "surrogatepass")) > lim.max_key_bytes:
        raise b.error(
            f'"owner" is longer than {lim.max_key_bytes} bytes (settings.max_key_bytes)', field="owner"
        )
    ttl_ms = b.ttl("ttl")
    if ttl_ms is None:
        raise b.error('needs "ttl": the lease in seconds (renew it within that time)', field="ttl")
    return b.command(AcquireLock(name, owner, ttl_ms, lim.max_locks), lim)


def renew(name: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.LOCK_RENEW, name, body)
    return b.command(RenewLock(name, b.token(), b.ttl("ttl")), lim)


def release(name: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.LOCK_RELEASE, name, body)
    return b.command(ReleaseLock(name, b.token()), lim)


def open_session(body: Any, lim: ApiLimits) -> Command:
    _Body(p.SESSION_OPEN, "", body)
    return Command(OpenSession(lim.session_idle_timeout_ms, lim.max_session_results, lim.max_sessions))


def close_session(sid_text: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.SESSION_CLOSE, sid_text, body)
    if not _is_decimal(sid_text, 19) or not 1 <= int(sid_text) <= INT64_MAX:
        raise b.error(f"{sid_text!r} is not a session id (a positive integer from POST /v1/sessions)")
    return Command(CloseSession(int(sid_text)))


def keepalive(sid_text: str, body: Any, lim: ApiLimits) -> Command:
    b = _Body(p.SESSION_KEEPALIVE, sid_text, body)
    if not _is_decimal(sid_text, 19) or not 1 <= int(sid_text) <= INT64_MAX:
        raise b.error(f"{sid_text!r} is not a session id (a positive integer from POST /v1/sessions)")
    return Command(KeepAlive(int(sid_text)))


# =========================================================================== paths and queries


def name_from_path(text: str, lim: ApiLimits, what: str = "key") -> str:
    """A key or lock name from the URL (already percent-decoded by aiohttp)."""
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refusal(p.INVALID_REQUEST, f"{what} {text!r} is not valid UTF-8") from None
    if n > lim.max_key_bytes:
        raise Refusal(
            p.KEY_TOO_LARGE,
            f"{what} of {n} bytes exceeds the limit of {lim.max_key_bytes} bytes (settings.max_key_bytes); "
            "use a shorter name, e.g. a hash of the long one",
            limit=lim.max_key_bytes,
        )
    if not text:
        raise Refusal(p.INVALID_REQUEST, f"the {what} is empty")
    return text


def stale_read(query: Mapping[str, str]) -> bool:
    c = query.get("consistency", "linearizable")
    if c not in ("linearizable", "stale"):
        raise Refusal(p.INVALID_REQUEST, f"consistency={c!r}: use linearizable (default) or stale")
    return c == "stale"


def timeout_s(query: Mapping[str, str], max_s: float) -> float:
    """``?timeout=S``: answer within S seconds (at most the node's request timeout)."""
    text = query.get("timeout")
    if text is None:
        return max_s
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not math.isfinite(t) or t <= 0:
        raise Refusal(p.INVALID_REQUEST, f"timeout={text!r}: give a positive number of seconds")
    return min(t, max_s)


def list_query(query: Mapping[str, str], lim: ApiLimits) -> ListQuery:
    what = p.KEYS_LIST.describe()
    for k in query:
        if k not in p.KEYS_LIST.query:
            raise Refusal(
                p.INVALID_REQUEST,
                f"{what}: unknown parameter {k!r}; known: prefix, after, limit, consistency",
            )
    prefix = name_from_path(query["prefix"], lim, "prefix") if query.get("prefix") else ""
    after = name_from_path(query["after"], lim, "after") if query.get("after") else None
    most = lim.max_keys_per_page
    text = query.get("limit", str(min(DEFAULT_LIST_LIMIT, most)))
    if not _is_decimal(text, 19) or int(text) < 1:
        raise Refusal(p.INVALID_REQUEST, f"{what}: limit={text[:40]!r}: give a whole number in 1..{most}")
    if int(text) > most:
        raise Refusal(
            p.PAGE_TOO_LARGE,
            f"{what}: limit={text} is above the limit of {most} keys per page "
            "(settings.max_keys_per_page); ask for fewer and follow 'next'",
            limit=most,
        )
    return ListQuery(prefix, after, int(text))


def _is_decimal(text: str, max_digits: int) -> bool:
    """ASCII digits only (str.isdigit also takes '²' and other digits int() refuses), not too long."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


# =========================================================================== body fields


class _Body:
    """One request body of endpoint ``ep`` on ``name``: a map with only the fields its row of the
    endpoint table lists; typed getters with precise errors."""

    def __init__(self, ep: p.Endpoint, name: str, body: Any) -> None:
        self.what = what = ep.describe(name)
        allowed = ep.body
        if not isinstance(body, dict):
            raise Refusal(
                p.INVALID_REQUEST,
                f"{what}: the body must be a JSON object (or msgpack map), got {_got(body)}",
            )
        unknown = sorted(str(k) for k in body if k not in allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise Refusal(
                p.INVALID_REQUEST,
                f"{what}: unknown field {unknown[0]!r}; known fields: {known}",
                field=unknown[0],
            )
        self.raw: dict[str, Any] = body

    def error(self, problem: str, **fields: Any) -> Refusal:
        return Refusal(p.INVALID_REQUEST, f"{self.what}: {problem}", **fields)

    def rule(self, problem: str | None) -> None:
        """Refuse if a cross-field rule (written once, in client/protocol.py or state/commands.py)
        found a problem."""
        if problem is not None:
            raise self.error(problem)

    def flag(self, name: str) -> bool:
        v = self.raw.get(name)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise self.error(f'"{name}" must be true or false, got {_got(v)}', field=name)
        return v

    def integer(self, name: str, lo: int, hi: int, what: str) -> int | None:
        v = self.raw.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.error(f'"{name}" must be {what}, got {_got(v)}', field=name)
        return int(v)

    def token(self) -> int:
        t = self.integer("token", 1, INT64_MAX, "the fencing token that acquire returned")
        if t is None:
            raise self.error('needs "token": the fencing token that acquire returned', field="token")
        return t

    def ttl(self, name: str) -> int | None:
        v = self.raw.get(name)
        if v is None:
            return None
        seconds = _finite(v)
        if seconds is None or seconds <= 0:
            raise self.error(f'"{name}" must be a positive number of seconds, got {_got(v)}', field=name)
        ms = math.ceil(round(seconds * 1000, 6))  # 0.1 s is 100 ms, not 101
        if ms > MAX_DURATION_MS:
            raise self.error(f'"{name}" of {v} s is longer than ten years', field=name)
        return ms

    def expiry(self) -> tuple[int | None, int | None]:
        ttl_ms = self.ttl("ttl")
        v = self.raw.get("expires_at")
        if v is None:
            return ttl_ms, None
        self.rule(p.one_expiry(ttl_ms, v))
        epoch_s = _finite(v)
        if epoch_s is None or not 0 <= epoch_s * 1000 <= MAX_TIME_MS:
            raise self.error(
                f'"expires_at" must be Unix epoch seconds (cluster time) up to year 9999, got {_got(v)}',
                field="expires_at",
            )
        return None, round(epoch_s * 1000)

    def session(self) -> SessionRef | None:
        present = {k for k in _SESSION_FIELDS if self.raw.get(k) is not None}
        if not present:
            return None
        raw = self.raw
        self.rule(session_needs_seq(raw.get("session"), raw.get("seq"), raw.get("ack")))
        sid = self.integer("session", 1, INT64_MAX, "a session id from POST /v1/sessions")
        seq = self.integer("seq", 1, INT64_MAX, "a positive integer numbering this write in its session")
        ack = self.integer("ack", 0, INT64_MAX, "a non-negative integer") or 0
        assert sid is not None and seq is not None
        self.rule(ack_below_seq(seq, ack))
        return SessionRef(sid, seq, ack)

    def fence(self, lim: ApiLimits) -> Fence | None:
        v = self.raw.get("fence")
        if v is None:
            return None
        if not isinstance(v, dict) or set(v) != {"lock", "token"}:
            raise self.error('"fence" must be {"lock": NAME, "token": N}', field="fence")
        lock, token = v["lock"], v["token"]
        if not isinstance(lock, str):
            raise self.error(f'"fence.lock" must be a lock name, got {_got(lock)}', field="fence")
        name_from_path(lock, lim, "fence lock name")
        if isinstance(token, bool) or not isinstance(token, int) or not 1 <= token <= INT64_MAX:
            raise self.error(
                f'"fence.token" must be a fencing token from acquire, got {_got(token)}', field="fence"
            )
        return Fence(lock, token)

    def command(self, op: Operation, lim: ApiLimits) -> Command:
        return Command(op, self.session(), self.fence(lim) if "fence" in self.raw else None)


def _check_value(what: str, value: Any, lim: ApiLimits) -> None:
    """Only what both msgpack and JSON carry (null, bool, int within 64 bits, float, str, bytes,
    lists, maps with string keys), at most MAX_VALUE_DEPTH deep, at most max_value_bytes encoded."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise Refusal(p.INVALID_REQUEST, f"{what}: the value nests deeper than {MAX_VALUE_DEPTH} levels")
        if isinstance(v, list | tuple):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise Refusal(
                        p.INVALID_REQUEST, f"{what}: map keys in a value must be strings, got {_got(k)}"
                    )
                stack.append((x, depth + 1))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise Refusal(p.INVALID_REQUEST, f"{what}: the value holds {v}, which JSON cannot carry")
        elif not (v is None or isinstance(v, bool | int | str | bytes)):
            raise Refusal(p.INVALID_REQUEST, f"{what}: the value holds {_got(v)}, which is not storable")
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Refusal(p.INVALID_REQUEST, f"{what}: the value cannot be stored: {exc}") from None
    if size > lim.max_value_bytes:
        raise Refusal(
            p.VALUE_TOO_LARGE,
            f"{what}: the value is {size} bytes encoded (msgpack); the limit is {lim.max_value_bytes} bytes "
            "(settings.max_value_bytes): store large blobs elsewhere and keep a reference here",
            limit=lim.max_value_bytes,
            size=size,
        )


def _finite(v: Any) -> float | None:
    """``v`` as a finite float, or None if it is not a number (or too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _got(v: Any) -> str:
    if v is None:
        return "null"
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", bytes: "bytes",
             list: "a list", dict: "an object"}  # fmt: skip
    kind = kinds.get(type(v), type(v).__name__)
    text = repr(v)
    if isinstance(v, list | dict) or len(text) > 40:
        return kind
    return f"{kind} {text}"
