"""AsyncClient: the whole client logic — leader following, exactly-once writes, typed errors.

(:class:`~raftstate.client.sync_client.Client` drives this same class from a private event loop.)

One call = one logical request with one deadline (``timeout``, default 10 s). Inside it::

    ┌─► send to the leader (or, while unknown, the next endpoint)
    │     2xx ............................ done; that node leads
    │     not_leader naming A ............ go to A at once (no sleep)
    │     connection refused ............. rotate, jittered backoff          (write: not applied)
    │     no answer / reset .............. jittered backoff, same node       (write: MAY be applied)
    │     leader moved while pending ..... go to the new leader at once      (write: MAY be applied)
    │     unavailable / timeout .......... rotate, jittered backoff          (write: not applied)
    │     outcome_unknown ................ jittered backoff                  (write: MAY be applied)
    │     session_expired ................ new session; re-send only if no attempt may have applied
    │     anything else .................. the answer: raise the typed error
    └── until the deadline: Unavailable (never applied) or OutcomeUnknown (may have been)

Writes are numbered ``(session, seq)`` and every attempt of one write carries the same numbers, so a
retry after a lost answer or a leader failover is applied once (see _session.py). Reads are not
numbered; linearizable reads go to the leader, stale ones to any node.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from raftstate.client import protocol as p
from raftstate.client._leader import LeaderTracker
from raftstate.client._lock import Lock, LockContext
from raftstate.client._once import OnceContext
from raftstate.client._retry import Backoff, Clock, Deadline
from raftstate.client._session import Registration, SessionManager, Ticket
from raftstate.client._time import Ttl, When, expiry_fields, from_epoch, ttl_seconds
from raftstate.client._transport import Request, Response, Transport
from raftstate.client._types import Consistency, Entry, Fence, LockInfo, LockLease
from raftstate.client._waiter import LOCK_GONE, ChangeWaiter
from raftstate.client.config import client_args
from raftstate.client.errors import (
    ClientClosed,
    ConnectFailed,
    InvalidRequest,
    LockHeld,
    LockLost,
    NotFound,
    OutcomeUnknown,
    RaftStateError,
    ResponseLost,
    ServerError,
    Unavailable,
    VersionMismatch,
    error_from_body,
)
from raftstate.client.stream import StreamingTransport
from raftstate.client.watch import Watch

__all__ = ["AsyncClient"]

log = logging.getLogger("raftstate.client")

DEFAULT_TIMEOUT_S: Final = 10.0
#: one attempt on one node gives up after this (a paused node never answers; the server's own
#: proposal timeout is 5 s, after which it answers outcome_unknown)
DEFAULT_ATTEMPT_TIMEOUT_S: Final = 3.0
#: an attempt pending this long starts a probe of who leads
DEFAULT_PROBE_AFTER_S: Final = 1.0
#: a client that never reached a node of its cluster gives up this early (not at its deadline)
#: once every endpoint is misaddressed: nothing listens there, another service or the other
#: scheme answers (ConnectFailed.misaddressed). Not at once: nodes started a moment ago may not
#: listen yet. A client that has reached its cluster once keeps trying until the deadline (a
#: whole-cluster restart looks the same from outside).
MISADDRESSED_GIVE_UP_S: Final = 2.0
#: close() asks the cluster to forget the client's session within this (best effort: a dead or
#: unreachable cluster costs close() at most this; the session then expires after its idle timeout)
SESSION_CLOSE_TIMEOUT_S: Final = 1.0
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class _Kind(enum.Enum):
    STALE_READ = "stale read"  # any node; no session
    READ = "read"  # leader only; no session
    WRITE = "write"  # leader only; harmless to repeat (renew, register): no session
    NUMBERED = "numbered write"  # leader only; carries (session, seq, ack)


@dataclass(frozen=True, slots=True)
class _Op:
    kind: _Kind
    #: the row of the endpoint table (client/protocol.py) this call performs
    endpoint: p.Endpoint
    #: the key, lock name or session id it acts on ("" when the endpoint takes none)
    name: str
    #: what the call is, for messages: "set key 'imports:42'"
    what: str
    body: dict[str, Any] | None = None
    query: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The table says whether the endpoint writes; the kind says how the client retries it.
        assert self.is_write == self.endpoint.writes, (self.kind, self.endpoint.name)
        assert self.kind is not _Kind.NUMBERED or "seq" in self.endpoint.body, self.endpoint.name

    @property
    def is_write(self) -> bool:
        return self.kind in (_Kind.WRITE, _Kind.NUMBERED)


class _Moved(Exception):
    """The leader changed to another node while an attempt was pending on this one."""


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


class AsyncClient:
    """The asyncio client. Use it as ``async with AsyncClient([...]) as state:`` or call
    :meth:`close` when done. One instance is safe to share between tasks of one event loop.

    ``endpoints``: node URLs ("http://127.0.0.1:7001"; "host:port" works too) — any subset of the
    cluster; the leader is found from there. ``timeout``: default deadline of each call (seconds).
    ``owner``: how this client names itself as a lock holder (default host:pid:random).
    ``transport``: the network seam (default: client operations multiplexed on one /v1/stream
    WebSocket per node, HTTP with keep-alive pools for the rest; msgpack both ways).
    ``rng``/``clock``: injected randomness (backoff jitter) and monotonic clock, for tests.
    ``token``: sent as ``Authorization: Bearer`` (clusters with auth on); ``ca``: the CA file (or an
    SSLContext) to verify https nodes against. Both configure the default transport.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        probe_after: float = DEFAULT_PROBE_AFTER_S,
        owner: str | None = None,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        token: str | None = None,
        ca: str | os.PathLike[str] | ssl.SSLContext | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not timeout > 0 or not attempt_timeout > 0 or not probe_after > 0:
            raise InvalidRequest(
                f"timeout ({timeout}), attempt_timeout ({attempt_timeout}) and probe_after ({probe_after}) "
                "must be positive seconds"
            )
        self.timeout = float(timeout)
        self.attempt_timeout = float(attempt_timeout)
        self.probe_after = float(probe_after)
        self.owner = owner or _default_owner()
        if transport is None:
            transport = StreamingTransport(token=token, ssl_context=_tls_context(ca))
        self._transport: Transport = transport
        self._rng = rng or random.Random()
        self._clock = clock
        self._leader = LeaderTracker(endpoints, clock=clock)
        self._sessions = SessionManager(self._register_session, clock=clock)
        self._closed = False
        #: some node of the cluster answered this client (any answer with a raftstate error document)
        self._reached_cluster = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] = "cluster.yaml", **kwargs: Any) -> Self:
        """A client for the nodes listed in a cluster file (``nodes[*].address``; https and its CA
        when it has ``tls:``), with the token from $RAFTSTATE_TOKEN unless ``token=`` is given."""
        endpoints, kw = client_args(Path(path), kwargs)
        return cls(endpoints, **kw)

    # ================================================================= lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End the client session (if a write opened one), then close connections. Calls after this
        raise ClientClosed. Locks still held simply expire.

        Ending the session (``DELETE /v1/sessions/{id}``) lets the cluster forget it and its
        remembered outcomes at once, instead of keeping them for ``session_idle_timeout_s`` and
        counting them against ``max_sessions``. It is best effort: at most
        :data:`SESSION_CLOSE_TIMEOUT_S`, and any failure is ignored (the session then expires)."""
        if self._closed:
            return
        try:
            await self._end_session()
        finally:
            self._closed = True
            await self._leader.aclose()
            await self._transport.aclose()

    async def _end_session(self) -> None:
        sid = self._sessions.forget()
        if sid is None:
            return
        op = _Op(_Kind.WRITE, p.SESSION_CLOSE, str(sid), f"close client session {sid}")
        try:
            async with asyncio.timeout(SESSION_CLOSE_TIMEOUT_S + 0.25):  # _call keeps its deadline; in case
                await self._call(op, SESSION_CLOSE_TIMEOUT_S)
        except (RaftStateError, TimeoutError, OSError) as exc:
            log.debug("client session %d was not closed (%s); it expires after its idle timeout", sid, exc)

    aclose = close

    @property
    def endpoints(self) -> list[str]:
        """Every node the client knows of (nodes named as leader are added as they appear)."""
        return list(self._leader.endpoints)

    @property
    def leader(self) -> str | None:
        """The endpoint the client currently believes leads (None while unknown)."""
        return self._leader.leader

    @property
    def session(self) -> int | None:
        """The client session its writes are numbered in (None until the first write)."""
        return self._sessions.session

    async def wait_for_leader(self, timeout: float | None = None) -> str:
        """Return the leader's endpoint once some node reports one; Unavailable after ``timeout``."""
        self._check_open()
        deadline = Deadline.after(self._timeout(timeout), self._clock)
        backoff = Backoff(self._rng, base_s=0.05, cap_s=0.5)
        while True:
            found = await self._leader.probe(self._transport)
            if found is not None:
                return found
            if deadline.expired:
                raise Unavailable(
                    f"no node of {', '.join(self._leader.endpoints)} reported a leader within "
                    f"{self._timeout(timeout):g}s"
                )
            await asyncio.sleep(min(backoff.next_delay(), deadline.remaining()))

    # ================================================================= keys

    async def get(
        self,
        key: str,
        default: Any = None,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> Any:
        """The key's value, or ``default`` if it does not exist (or expired)."""
        entry = await self.get_entry(key, consistency=consistency, timeout=timeout)
        return default if entry is None else entry.value

    async def get_entry(
        self, key: str, *, consistency: Consistency = "linearizable", timeout: float | None = None
    ) -> Entry | None:
        """The key's value, version and expiry, or None if it does not exist."""
        _check_key(key)
        kind, query = _read_kind(consistency)
        op = _Op(kind, p.KV_GET, key, f"get key {key!r}", query=query)
        try:
            body = await self._call(op, timeout)
        except NotFound as exc:
            if exc.code == p.NOT_FOUND:
                return None
            raise
        return Entry(
            _field(body, "value", object, op),
            _field(body, "version", int, op),
            from_epoch(body.get("expires_at")),
        )

    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl | None = None,
        expires_at: When | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store ``value`` (anything msgpack carries) under ``key``; returns the new version.
        ``ttl`` (seconds or timedelta) or ``expires_at`` (aware datetime or epoch seconds) make it expire."""
        op = self._put(key, value, "set", ttl, expires_at, fence, {})
        return _field(await self._call(op, timeout), "version", int, op)

    async def set_if_absent(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl | None = None,
        expires_at: When | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Create ``key`` only if it does not exist (or expired). True for the one caller that created it."""
        created, _ = await self._set_if_absent(key, value, ttl, expires_at, fence, timeout)
        return created

    async def compare_and_set(
        self,
        key: str,
        value: Any,
        *,
        version: int,
        ttl: Ttl | None = None,
        expires_at: When | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Replace the value only if the key is still at ``version`` (from get_entry). False if not."""
        return await self._compare_and_set(key, value, version, ttl, expires_at, fence, timeout) is not None

    async def delete(
        self,
        key: str,
        *,
        version: int | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Remove ``key``; True if it existed. With ``version``, only if still at that version
        (else VersionMismatch)."""
        _check_key(key)
        body: dict[str, Any] = {}
        if version is not None:
            body["if_version"] = _check_version(version, key)
        body.update(self._fence(fence, key))
        op = _Op(_Kind.NUMBERED, p.KV_DELETE, key, f"delete key {key!r}", body)
        return _field(await self._call(op, timeout), "deleted", bool, op)

    async def increment(
        self,
        key: str,
        by: int = 1,
        *,
        ttl: Ttl | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        """Add ``by`` to the integer at ``key`` (a missing key counts as 0); returns the new value.
        Exactly once, also when retried across a failover. WrongType if the value is not an integer,
        Overflow outside the signed 64-bit range."""
        _check_key(key)
        if isinstance(by, bool) or not isinstance(by, int) or not INT64_MIN <= by <= INT64_MAX:
            raise InvalidRequest(
                f"increment key {key!r}: by must be a 64-bit integer, got {by!r}", details={"key": key}
            )
        body: dict[str, Any] = {"by": by, **expiry_fields(ttl, None, what=f"increment key {key!r}")}
        body.update(self._fence(fence, key))
        op = _Op(_Kind.NUMBERED, p.KV_INCREMENT, key, f"increment key {key!r}", body)
        return _field(await self._call(op, timeout), "value", int, op)

    async def keys(
        self,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int | None = None,
        page_size: int = 1000,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> AsyncGenerator[str, None]:
        """Every key starting with ``prefix``, sorted, fetched a page at a time (``after``: start
        after this key; ``limit``: at most this many). ``timeout`` applies to each page."""
        if page_size <= 0 or (limit is not None and limit < 0):
            raise InvalidRequest(f"keys(prefix={prefix!r}): page_size must be > 0 and limit >= 0")
        kind, extra = _read_kind(consistency)
        yielded = 0
        while limit is None or yielded < limit:
            n = page_size if limit is None else min(page_size, limit - yielded)
            query = {"prefix": prefix, "limit": str(n), **extra}
            if after is not None:
                query["after"] = after
            op = _Op(kind, p.KEYS_LIST, "", f"keys with prefix {prefix!r}", query=query)
            body = await self._call(op, timeout)
            page = _field(body, "keys", list, op)
            for k in page:
                yield k
                yielded += 1
            nxt = body.get("next")
            if not isinstance(nxt, str) or not page:
                return
            after = nxt

    # ================================================================= watch

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        progress: bool = False,
        relist: bool = False,
        node: str | None = None,
    ) -> Watch:
        """``async for event in state.watch("imports:42:")``: every change under ``prefix`` in revision
        order (docs/watch.md). Without ``start_revision``, from the next change after the call (a
        linearizable start on the leader); with one, history is replayed from it first. Polls any
        node (``node``: start on this one) and resumes on another after a failure, without a gap or
        a duplicate. ``progress=True`` also yields Progress(revision) when a poll ends empty;
        ``relist=True`` yields a Snapshot of the prefix first (and again when the history a resume
        needs is gone) instead of raising Compacted. Close it (``async with``) to stop polling."""
        self._check_open()
        return Watch(self, prefix, start_revision, progress=progress, relist=relist, node=node)

    # ================================================================= locks

    def lock(
        self, name: str, ttl: Ttl = 10.0, *, timeout: float | None = None, owner: str | None = None
    ) -> LockContext:
        """``async with state.lock(name, ttl=10) as lock``: wait until acquired (at most ``timeout``
        seconds, None: as long as it takes; then LockHeld), renew every ttl/3 in the background,
        release at exit. ``lock.token`` is the fencing token, ``lock.lost`` turns True when the lease
        is (or may be) gone — stop writing; LockLost is raised at exit then."""
        _check_key(name, "lock name")
        ttl_s = ttl_seconds(ttl, what=f"lock {name!r}")
        if timeout is not None and timeout < 0:
            raise InvalidRequest(f"lock {name!r}: timeout must be >= 0 seconds or None")
        return LockContext(self, name, ttl_s, timeout, owner, self._clock)

    async def acquire_lock(
        self, name: str, ttl: Ttl = 10.0, *, owner: str | None = None, timeout: float | None = None
    ) -> LockLease:
        """Try once to take the lock: a LockLease, or LockHeld (with ``owner``, ``expires_at``).
        Nothing renews it: call renew_lock within the ttl, release_lock when done."""
        lease, _ = await self._acquire(name, ttl_seconds(ttl, what=f"lock {name!r}"), owner, timeout)
        return lease

    async def renew_lock(
        self, name: str, token: int, ttl: Ttl | None = None, *, timeout: float | None = None
    ) -> datetime | None:
        """Extend the lease (by ``ttl`` from now, default: the acquire's ttl); returns its new end.
        LockLost if ``token`` no longer holds it."""
        _check_key(name, "lock name")
        body: dict[str, Any] = {"token": _check_token(token, name)}
        if ttl is not None:
            body["ttl"] = ttl_seconds(ttl, what=f"renew lock {name!r}")
        op = _Op(_Kind.WRITE, p.LOCK_RENEW, name, f"renew lock {name!r}", body)
        return from_epoch(_field(await self._call(op, timeout), "expires_at", object, op))

    async def release_lock(self, name: str, token: int, *, timeout: float | None = None) -> bool:
        """Release the lock if ``token`` still holds it. True if this call released it."""
        _check_key(name, "lock name")
        body = {"token": _check_token(token, name)}
        # Numbered, so that a retry after a lost answer reports the first outcome (True), not False.
        op = _Op(_Kind.NUMBERED, p.LOCK_RELEASE, name, f"release lock {name!r}", body)
        try:
            return _field(await self._call(op, timeout), "released", bool, op)
        except LockLost:
            return False  # someone else holds it now: not ours to release

    async def lock_info(self, name: str, *, timeout: float | None = None) -> LockInfo | None:
        """Who holds the lock now, or None if it is free."""
        _check_key(name, "lock name")
        op = _Op(_Kind.READ, p.LOCK_GET, name, f"read lock {name!r}")
        try:
            body = await self._call(op, timeout)
        except NotFound as exc:
            if exc.code == p.NOT_FOUND:
                return None
            raise
        return LockInfo(
            name,
            _field(body, "owner", str, op),
            _field(body, "token", int, op),
            from_epoch(body.get("expires_at")),
        )

    # ================================================================= once

    def once(
        self,
        key: str,
        ttl: Ttl,
        *,
        claim_ttl: Ttl = 30.0,
        wait: float | None = None,
    ) -> OnceContext:
        """``async with state.once("stripe:evt_123", ttl=7 * 86400) as first_time:`` — True for the
        one caller that gets to run the body, False once it has run. See _once.py for the crash
        semantics: a claimer that crashes mid-body lets another caller run it after ``claim_ttl``."""
        _check_key(key)
        return OnceContext(
            self,
            key,
            ttl_seconds(ttl, what=f"once key {key!r}"),
            ttl_seconds(claim_ttl, what=f"once key {key!r} claim"),
            wait,
        )

    # ================================================================= building blocks of locks and once

    def _put(
        self,
        key: str,
        value: Any,
        verb: str,
        ttl: Ttl | None,
        expires_at: When | None,
        fence: Fence | None,
        extra: dict[str, Any],
    ) -> _Op:
        _check_key(key)
        what = f"{verb} key {key!r}"
        body = {
            "value": value,
            **expiry_fields(ttl, expires_at, what=what),
            **extra,
            **self._fence(fence, key),
        }
        return _Op(_Kind.NUMBERED, p.KV_SET, key, what, body)

    async def _set_if_absent(
        self,
        key: str,
        value: Any,
        ttl: Ttl | None,
        expires_at: When | None,
        fence: Fence | None,
        timeout: float | None,
    ) -> tuple[bool, int]:
        """(created, version of the key now)."""
        op = self._put(key, value, "set_if_absent", ttl, expires_at, fence, {"if_absent": True})
        body = await self._call(op, timeout)
        return _field(body, "created", bool, op), _field(body, "version", int, op)

    async def _compare_and_set(
        self,
        key: str,
        value: Any,
        version: int,
        ttl: Ttl | None,
        expires_at: When | None,
        fence: Fence | None,
        timeout: float | None,
    ) -> int | None:
        """The new version, or None if the key was not at ``version``."""
        extra = {"if_version": _check_version(version, key)}
        op = self._put(key, value, "compare_and_set", ttl, expires_at, fence, extra)
        try:
            return _field(await self._call(op, timeout), "version", int, op)
        except VersionMismatch:
            return None

    async def _acquire(
        self, name: str, ttl_s: float, owner: str | None, timeout: float | None
    ) -> tuple[LockLease, float]:
        """One acquire call: (lease, monotonic time the call started — before the cluster granted it)."""
        _check_key(name, "lock name")
        owner = owner or self.owner
        started = self._clock()
        args = {"owner": owner, "ttl": ttl_s}
        op = _Op(_Kind.NUMBERED, p.LOCK_ACQUIRE, name, f"acquire lock {name!r}", args)
        body = await self._call(op, timeout)
        lease = LockLease(name, _field(body, "token", int, op), owner, from_epoch(body.get("expires_at")))
        return lease, started

    async def _acquire_and_renew(
        self, name: str, ttl_s: float, wait_s: float | None, owner: str | None
    ) -> Lock:
        """Acquire — while someone else holds it, wait for its release/expiry event (client/_waiter.py:
        a slow poll as safety net; jittered polling on a cluster without watch) — then start renewing."""
        wait = None if wait_s is None else Deadline.after(wait_s, self._clock)
        backoff = Backoff(self._rng, base_s=0.05, cap_s=max(0.05, min(1.0, ttl_s / 2)))
        waiter = ChangeWaiter(self, name, LOCK_GONE, backoff)  # woken by the release (_waiter.py)
        try:
            while True:
                try:
                    lease, started = await self._acquire(name, ttl_s, owner, None)
                    break
                except LockHeld as held:
                    if wait is not None and wait.remaining() <= 0:
                        raise LockHeld(
                            f"lock {name!r} is held by {held.owner or 'someone else'} "
                            f"(until {held.expires_at}); gave up after waiting {wait_s:g}s",
                            node=held.node,
                            details=held.details,
                        ) from held
                    if not waiter.started:
                        await waiter.start()
                        continue  # a release between the refusal and the watch's start: try now
                    await waiter.wait(None if wait is None else wait.remaining())
        finally:
            await waiter.close()
        lock = Lock(self, lease, ttl_s, started, self._clock)
        lock._start_renewing()
        return lock

    def _fence(self, fence: Fence | None, key: str) -> dict[str, Any]:
        if fence is None:
            return {}
        if isinstance(fence, Lock) and fence.lost:
            # The holder was told to stop; refuse locally rather than race the cluster's verdict.
            raise LockLost(
                f"write to key {key!r} fenced by lock {fence.name!r} (token {fence.token}) refused: "
                f"the lock was lost ({fence.lost_reason})",
                details={"key": key, "name": fence.name, "token": fence.token},
            )
        return {"fence": {"lock": fence.name, "token": _check_token(fence.token, fence.name)}}

    async def _register_session(self, deadline: Deadline) -> Registration:
        op = _Op(_Kind.WRITE, p.SESSION_OPEN, "", "register a client session", {})
        body = await self._call(op, None, deadline)
        idle = body.get("idle_timeout_s") if isinstance(body, dict) else None
        idle_s = (
            float(idle) if isinstance(idle, int | float) and not isinstance(idle, bool) and idle > 0 else None
        )
        return Registration(_field(body, "session", int, op), idle_s)

    # ================================================================= the retry loop

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        if not timeout > 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this raftstate client is closed; create a new one")

    async def _call(self, op: _Op, timeout: float | None, deadline: Deadline | None = None) -> Any:
        """Run ``op`` until it has an answer or its deadline passes (see the module docstring)."""
        self._check_open()
        limit_s = self._timeout(timeout)
        if deadline is None:
            deadline = Deadline.after(limit_s, self._clock)
        backoff = Backoff(self._rng)
        ticket: Ticket | None = None
        maybe_applied = False  # some attempt of this write may have been applied
        last: RaftStateError | None = None
        attempts = 0
        redirects = 0  # not_leader hops in a row: after a few, stale hints cost a backoff
        misaddressed: dict[str, ConnectFailed] = {}  # endpoint -> why no raftstate node is there
        started = self._clock()
        try:
            while True:
                if attempts and deadline.expired:
                    raise self._give_up(op, ticket, limit_s, last, attempts, maybe_applied) from last
                if op.kind is _Kind.NUMBERED and ticket is None:
                    ticket = await self._ticket(op, deadline)
                body = op.body
                if ticket is not None:
                    body = {**(op.body or {}), **self._sessions.fields(ticket)}
                stale = op.kind is _Kind.STALE_READ
                endpoint = self._leader.any_node() if stale else self._leader.target()
                attempts += 1
                try:
                    resp = await self._attempt(
                        endpoint, Request(op.endpoint, op.name, body, op.query), deadline, stale
                    )
                except _Moved:
                    maybe_applied |= op.is_write
                    continue  # the leader changed under us: go there at once
                except ConnectFailed as exc:
                    if not (exc.ran_out and last is not None):  # "within 0.00s" explains nothing
                        last = exc
                    self._leader.failed(endpoint)
                    if exc.misaddressed:
                        misaddressed[endpoint] = exc
                        self._give_up_if_misaddressed(op, misaddressed, started, maybe_applied)
                except ResponseLost as exc:
                    # The node may be alive (a reset, a slow fsync): try it again after a backoff. If
                    # it died, that try is refused and we rotate; if it is paused, the probe started
                    # while this attempt was pending finds the new leader.
                    last = exc
                    maybe_applied |= op.is_write
                else:
                    if ticket is not None:
                        self._sessions.answered(ticket)
                    if 200 <= resp.status < 300:
                        self._reached_cluster = True
                        if not stale:
                            self._leader.succeeded(endpoint)
                        return resp.body
                    err = error_from_body(resp.status, resp.body, node=endpoint, what=op.what)
                    last = err
                    if isinstance(err, ConnectFailed):  # not a raftstate node's answer: nothing applied
                        self._leader.failed(endpoint)
                        misaddressed[endpoint] = err
                        self._give_up_if_misaddressed(op, misaddressed, started, maybe_applied)
                        await asyncio.sleep(min(backoff.next_delay(), deadline.remaining()))
                        continue
                    self._reached_cluster = True
                    if err.code == p.NOT_LEADER:
                        redirects += 1
                        if (
                            self._leader.redirect(endpoint, err.details.get("leader_address"))
                            and redirects <= 3
                        ):
                            continue  # follow the hint at once
                    elif err.code == p.OUTCOME_UNKNOWN:
                        maybe_applied |= op.is_write
                    elif ticket is not None and (err.code == p.SESSION_EXPIRED or _session_full(err, ticket)):
                        # Not applied (this attempt). Re-send under a new session only if no other
                        # attempt of this write can have been: else it could apply twice.
                        self._sessions.expired(ticket)
                        if maybe_applied:
                            raise OutcomeUnknown(
                                f"{op.what}: the outcome is unknown: an earlier attempt may have been "
                                f"applied, and session {ticket.session} can no longer confirm it "
                                f"({err})",
                                cause=err,
                                session=ticket.session,
                                seq=ticket.seq,
                                node=endpoint,
                                details=err.details,
                            ) from err
                        self._sessions.done(ticket)
                        ticket = None  # no attempt can have applied: re-send under a new session
                        continue
                    elif err.code == p.INTERNAL and op.is_write:
                        raise self._unknown(op, ticket, limit_s, err, attempts) from err
                    elif _retryable(err):
                        if not stale:
                            self._leader.unsure(endpoint)
                    else:
                        raise err  # a definitive answer
                redirects = 0
                await asyncio.sleep(min(backoff.next_delay(), deadline.remaining()))
        finally:
            if ticket is not None:
                self._sessions.done(ticket)

    def _give_up_if_misaddressed(
        self, op: _Op, misaddressed: dict[str, ConnectFailed], started: float, maybe_applied: bool
    ) -> None:
        """Raise Unavailable now if no node of the cluster was ever reached and every endpoint is
        misaddressed (see :data:`MISADDRESSED_GIVE_UP_S`); else let the call retry."""
        if self._reached_cluster or maybe_applied or self._clock() - started < MISADDRESSED_GIVE_UP_S:
            return
        if not set(self._leader.endpoints) <= misaddressed.keys():
            return
        first = next(iter(misaddressed.values()))
        refused = all(e.misaddressed == "refused" for e in misaddressed.values())
        head = (
            f"nothing listening at {', '.join(self._leader.endpoints)}: is the cluster running, and are "
            "these its addresses?"
            if refused
            else "no raftstate node at any endpoint: " + "; ".join(e.message for e in misaddressed.values())
        )
        raise Unavailable(
            f"{op.what}: {head} (gave up early: no raftstate node received it)", cause=first, node=first.node
        )

    async def _ticket(self, op: _Op, deadline: Deadline) -> Ticket:
        try:
            return await self._sessions.ticket(deadline)
        except Unavailable as exc:  # nothing of op was sent yet: it was certainly not applied
            raise Unavailable(f"{op.what}: cannot register a client session: {exc}", cause=exc.cause) from exc

    def _give_up(
        self,
        op: _Op,
        ticket: Ticket | None,
        limit_s: float,
        last: RaftStateError | None,
        attempts: int,
        maybe_applied: bool,
    ) -> RaftStateError:
        if maybe_applied:
            return self._unknown(op, ticket, limit_s, last, attempts)
        return Unavailable(
            f"{op.what}: no leader answered within {limit_s:g}s ({attempts} attempts on "
            f"{', '.join(self._leader.endpoints)}); last: {last}",
            cause=last,
            node=last.node if last else None,
        )

    def _unknown(
        self,
        op: _Op,
        ticket: Ticket | None,
        limit_s: float,
        last: RaftStateError | None,
        attempts: int,
    ) -> OutcomeUnknown:
        ident = f" (session {ticket.session}, seq {ticket.seq})" if ticket else ""
        return OutcomeUnknown(
            f"{op.what}{ident}: the outcome is unknown after {attempts} attempts in {limit_s:g}s: "
            f"it may or may not have been applied; last: {last}",
            cause=last,
            session=ticket.session if ticket else None,
            seq=ticket.seq if ticket else None,
            node=last.node if last else None,
        )

    async def _attempt(self, endpoint: str, request: Request, deadline: Deadline, stale: bool) -> Response:
        """One try on one node. Raises _Moved if the leader changed to another node meanwhile."""
        timeout_s = min(self.attempt_timeout, deadline.remaining())
        if timeout_s <= 0:  # nothing sent
            raise ConnectFailed(
                f"the deadline passed before {request.describe()} was sent to {endpoint}", node=endpoint
            )
        send = asyncio.ensure_future(self._transport.send(endpoint, request, timeout_s))
        if stale:
            return await send  # any node may answer: a leader change does not matter
        moved = asyncio.ensure_future(self._leader.wait_moved_from(endpoint))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {send, moved}, timeout=self.probe_after, return_when=asyncio.FIRST_COMPLETED
                )
                if send in done:
                    return send.result()
                if moved in done:
                    raise _Moved(endpoint)
                self._leader.probe_soon(self._transport)  # slow: is it still the leader?
        finally:
            for t in (send, moved):
                if not t.done():
                    t.cancel()
            await asyncio.gather(send, moved, return_exceptions=True)


def _session_full(err: RaftStateError, ticket: Ticket) -> bool:
    """The cluster refused a new write because its session holds too many unacknowledged outcomes
    (settings.max_session_results). Nothing was applied; a new session takes it."""
    d = err.details
    return err.code == p.INVALID_REQUEST and d.get("session") == ticket.session and "limit" in d


def _tls_context(ca: str | os.PathLike[str] | ssl.SSLContext | None) -> ssl.SSLContext | None:
    """``ca``: a CA file to trust (a private cluster CA), or a ready context; None: the system CAs."""
    if ca is None or isinstance(ca, ssl.SSLContext):
        return ca
    try:
        return ssl.create_default_context(cafile=os.fspath(ca))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(f"ca={os.fspath(ca)!r}: cannot load it as a CA certificate ({exc})") from None


def _retryable(err: RaftStateError) -> bool:
    """Answers after which the same request may simply be tried again (after a backoff)."""
    if err.code in (p.UNAVAILABLE, p.TIMEOUT):
        return True
    # a proxy's 502/503/504 without an error document
    return isinstance(err, Unavailable) and err.code is not None and err.code.startswith("http_")


def _read_kind(consistency: Consistency) -> tuple[_Kind, dict[str, str]]:
    if consistency == "linearizable":
        return _Kind.READ, {}
    if consistency == "stale":
        return _Kind.STALE_READ, {"consistency": "stale"}
    raise InvalidRequest(f"consistency must be 'linearizable' or 'stale', got {consistency!r}")


def _check_key(key: object, what: str = "key") -> None:
    if not isinstance(key, str):
        raise InvalidRequest(f"{what} must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidRequest(f"{what} must not be empty")


def _check_version(version: object, key: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequest(
            f"key {key!r}: version must be an int >= 1 (from get_entry), got {version!r}",
            details={"key": key},
        )
    return version


def _check_token(token: object, name: str) -> int:
    if isinstance(token, bool) or not isinstance(token, int) or token < 1:
        raise InvalidRequest(
            f"lock {name!r}: token must be an int >= 1, got {token!r}", details={"name": name}
        )
    return token


_T = TypeVar("_T")


def _field(body: Any, name: str, typ: type[_T], op: _Op) -> _T:
    """``body[name]``, checked to be a ``typ``; a node answering otherwise is a ServerError."""
    if not isinstance(body, dict) or name not in body:
        raise ServerError(f"{op.what}: the answer has no {name!r}: {body!r:.200}")
    v = body[name]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ServerError(f"{op.what}: {name!r} in the answer is {type(v).__name__}, expected {typ.__name__}")
    return v
