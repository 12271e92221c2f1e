"""``watch(prefix)``: every change under a prefix, in revision order, from a revision (docs/watch.md).

A :class:`Watch` is a long-poll loop (the *pump*, one task) feeding a bounded queue that the caller
iterates::

    node (any) ──GET /v1/watch?prefix&from=N──► pump ──put (waits when full)──► queue ──► async for

- The first poll without ``start_revision`` goes to the LEADER (a linearizable start: every change
  acknowledged before ``watch()`` was called is at or below it); every later poll may go to ANY node
  and stays on it while it answers.
- The pump's position ``next`` is the first revision it has not fetched. An answer
  ``{"events", "revision": R}`` is complete up to R: everything it holds goes into the queue, then
  ``next = R + 1``. A failed poll (connection refused, a lost answer, a node that died or hangs) is
  asked again on ANOTHER node from the same ``next`` — no gap and no duplicate, whichever node answers.
- The queue is bounded: a consumer that stops reading stops the polling (nothing grows anywhere;
  the node keeps the history, not a buffer per watcher).
- ``compacted`` (the history from ``next`` is gone) raises :class:`~raftstate.client.errors.Compacted`
  to the consumer, or with ``relist=True`` re-lists the prefix: a :class:`Snapshot` of the keys (with
  values and versions) at or after revision S, then the events from S + 1 — a replayed change of a
  listed key at or below the version the listing saw is dropped, so applying the snapshot and then
  the events gives the state exactly.

``Watch.revision`` is what the CONSUMER has seen: every change under the prefix up to it has been
yielded (it advances on progress notifications too). To resume later elsewhere, watch again from
``revision + 1``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from raftstate.client import protocol as p
from raftstate.client._retry import Backoff
from raftstate.client._time import from_epoch
from raftstate.client._transport import Request
from raftstate.client._types import Entry
from raftstate.client.errors import (
    AuthError,
    ClientClosed,
    Compacted,
    InvalidRequest,
    ServerError,
    TransportError,
    error_from_body,
)

if TYPE_CHECKING:
    from raftstate.client.async_client import AsyncClient

__all__ = ["Event", "EventType", "Progress", "Snapshot", "Watch"]

log = logging.getLogger("raftstate.client")

EventType = Literal["put", "delete", "expire", "lock_acquire", "lock_release", "lock_expire"]
EVENT_TYPES: Final = frozenset({"put", "delete", "expire", "lock_acquire", "lock_release", "lock_expire"})
#: event types that change a key (the others are about a lock of that name)
KEY_EVENTS: Final = frozenset({"put", "delete", "expire"})

#: how long one poll waits on the node for a first event (the progress interval; seconds)
DEFAULT_POLL_S: Final = 5.0
#: items (events, progress marks) between the pump and the consumer
DEFAULT_QUEUE_SIZE: Final = 1000
#: events per answer asked for
DEFAULT_LIMIT: Final = 1000
#: an answer must arrive this long after the poll's own timeout, else it is lost (seconds)
ANSWER_GRACE_S: Final = 3.0
#: expires_at above this is in milliseconds (epoch seconds pass it in the year 5138)
_MS_THRESHOLD: Final = 100_000_000_000


@dataclass(frozen=True, slots=True)
class Event:
    """One change under the watched prefix (docs/watch.md, "Revisions and events")."""

    type: EventType
    key: str
    #: the value as written (put); None otherwise
    value: Any
    #: the log index of the change; events of one revision come together
    revision: int
    #: the key's version after a put (= revision); None otherwise
    version: int | None = None
    #: when the key (put) or the lock (lock_acquire) expires, cluster time UTC; None: never / n.a.
    expires_at: datetime | None = None
    #: the lock's fencing token (lock_* events)
    token: int | None = None
    #: the lock's holder (lock_acquire)
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """Nothing changed under the prefix up to ``revision`` (yielded with ``progress=True``)."""

    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The keys under the prefix with their values (``relist=True``): the state at ``revision`` or
    later per key (``Entry.version`` says when each was written); the events after it follow."""

    items: dict[str, Entry]
    revision: int


@dataclass(frozen=True, slots=True)
class _Done:
    """The pump's answer is complete up to ``revision`` (internal: advances ``Watch.revision``)."""

    revision: int
    empty: bool


@dataclass(slots=True)
class _Cursor:
    """Where the pump is: the next revision to fetch and the node it asks."""

    next: int | None  # None: not started (the first poll takes the current revision)
    node: str | None = None
    #: after a re-list: key -> version the listing saw; replayed changes at or below it are dropped
    skip: dict[str, int] = field(default_factory=dict)
    skip_until: int = 0


def parse_event(raw: Any) -> Event:
    """An event map from the wire as an :class:`Event`; ServerError if it is not one."""
    if not isinstance(raw, dict):
        raise ServerError(f"a watch answer holds a non-map event: {raw!r:.200}")
    typ, key, rev = raw.get("type"), raw.get("key"), raw.get("revision")
    if typ not in EVENT_TYPES or not isinstance(key, str) or not _is_int(rev):
        raise ServerError(f"a watch answer holds a malformed event: {raw!r:.200}")
    version = raw.get("version")
    token = raw.get("token")
    owner = raw.get("owner")
    assert isinstance(rev, int)
    return Event(
        typ,
        key,
        raw.get("value"),
        rev,
        version if _is_int(version) else None,
        _expires(raw.get("expires_at")),
        token if _is_int(token) else None,
        owner if isinstance(owner, str) else None,
    )


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expires(v: object) -> datetime | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and v > _MS_THRESHOLD:
        v = v / 1000
    return from_epoch(v)


class Watch:
    """``async for item in state.watch(prefix)``: :class:`Event` (and :class:`Progress` with
    ``progress=True``, a :class:`Snapshot` with ``relist=True``). Close it (``async with``, or
    :meth:`close`) to stop the polling."""

    def __init__(
        self,
        client: AsyncClient,
        prefix: str,
        start_revision: int | None = None,
        *,
        progress: bool = False,
        relist: bool = False,
        node: str | None = None,
        poll_s: float = DEFAULT_POLL_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if not isinstance(prefix, str):
            raise InvalidRequest(f"watch: prefix must be a str, got {type(prefix).__name__}")
        if start_revision is not None and (not _is_int(start_revision) or start_revision < 1):
            raise InvalidRequest(
                f"watch of prefix {prefix!r}: start_revision must be an int >= 1, got {start_revision!r}"
            )
        if not poll_s > 0 or queue_size < 1:
            raise InvalidRequest(f"watch of prefix {prefix!r}: poll_s must be > 0 and queue_size >= 1")
        self.prefix = prefix
        self._client = client
        self._progress = progress
        self._relist = relist
        self._poll_s = float(poll_s)
        if node is not None:
            from raftstate.client._leader import normalize_endpoint

            node = normalize_endpoint(node)
        self._cursor = _Cursor(start_revision, node)
        #: every change under the prefix up to this revision has been yielded (None: not started)
        self.revision: int | None = None if start_revision is None else start_revision - 1
        #: nodes that answered polls, in order of use (tests and the chaos run read it)
        self.nodes_used: list[str] = []
        self._queue: asyncio.Queue[Event | Progress | Snapshot | _Done | BaseException] = asyncio.Queue(
            queue_size
        )
        self._pump: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._rng = random.Random()

    # ----------------------------------------------------------------- the caller's side

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Event | Progress | Snapshot]:
        return self

    async def __anext__(self) -> Event | Progress | Snapshot:
        self._start()
        while True:
            if self._closed:
                raise StopAsyncIteration
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._closed = True
                raise item
            if isinstance(item, _Done):
                self.revision = item.revision
                if item.empty and self._progress:
                    return Progress(item.revision)
                continue
            if isinstance(item, Snapshot):
                self.revision = item.revision
                return item
            # every event of revisions below this one has been yielded
            self.revision = max(self.revision or 0, item.revision - 1)
            return item

    async def started(self) -> int:
        """Wait until the watch has its starting point; returns the revision it is complete up to.
        Every change made after this returns is delivered (waiters call it before acting)."""
        self._start()
        pump = self._pump
        if self._cursor.next is None and pump is not None:
            started = asyncio.ensure_future(self._started.wait())
            try:
                await asyncio.wait({started, pump}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                started.cancel()
        nxt = self._cursor.next
        if nxt is None:
            failed = self._failure
            if failed is not None:
                raise failed
            raise ClientClosed(f"watch of prefix {self.prefix!r} stopped before it started")
        return nxt - 1

    async def close(self) -> None:
        """Stop polling. Iteration then ends (``StopAsyncIteration``)."""
        self._closed = True
        pump, self._pump = self._pump, None
        # Cancel until it is done: asyncio.wait_for (in the transport) can swallow a cancellation
        # that arrives as its answer does (Python < 3.12), and the pump would poll on. It also
        # stops by itself at its next poll, seeing _closed.
        while pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump}, timeout=0.1)
        if pump is not None and not pump.cancelled():
            pump.exception()  # retrieved: never logged as "exception was never retrieved"
        if self._queue.empty():  # wake a consumer waiting in __anext__: it then stops
            self._queue.put_nowait(_Done(self.revision or 0, False))

    aclose = close

    def _start(self) -> None:
        if self._pump is None and not self._closed:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"raftstate-watch-{self.prefix}"
            )

    # ----------------------------------------------------------------- the pump

    async def _run(self) -> None:
        try:
            if self._cursor.next is None:
                if self._relist:
                    await self._do_relist()
                else:
                    self._cursor.next = await self._current_revision() + 1
            self._started.set()
            while not self._closed:
                await self._poll_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failure = exc
            await self._queue.put(exc)

    async def _current_revision(self) -> int:
        """A linearizable starting point: the leader's revision after a ReadIndex."""
        from raftstate.client.async_client import _Kind, _Op

        c = self._client
        op = _Op(
            _Kind.READ, p.WATCH, "", f"start a watch of prefix {self.prefix!r}", query={"prefix": self.prefix}
        )
        body = await c._call(op, None)
        rev = body.get("revision") if isinstance(body, dict) else None
        if not _is_int(rev):
            raise ServerError(
                f"watch of prefix {self.prefix!r}: the start answer has no revision: {body!r:.200}"
            )
        assert isinstance(rev, int)
        return rev

    async def _do_relist(self) -> None:
        """Snapshot the prefix (keys and values, paged), then resume from the snapshot's revision."""
        c = self._client
        start = await self._current_revision()
        items: dict[str, Entry] = {}
        async for key in c.keys(self.prefix):
            entry = await c.get_entry(key)
            if entry is not None:
                items[key] = entry
        self._cursor.next = start + 1
        self._started.set()
        self._cursor.skip = {k: e.version for k, e in items.items() if e.version > start}
        self._cursor.skip_until = max(self._cursor.skip.values(), default=0)
        await self._queue.put(Snapshot(items, start))

    def _pick_node(self, avoid: str | None) -> str:
        """Any node: the one the poll stays on, else one at random (a node that just failed is avoided)."""
        eps = self._client._leader.endpoints
        if self._cursor.node is not None and self._cursor.node != avoid:
            return self._cursor.node
        others = [e for e in eps if e != avoid] or list(eps)
        return self._rng.choice(others)

    async def _poll_once(self) -> None:
        c = self._client
        backoff = Backoff(self._rng, base_s=0.05, cap_s=1.0)
        avoid: str | None = None
        while not self._closed:
            if c._closed:
                raise ClientClosed("the client of this watch was closed")
            assert self._cursor.next is not None
            node = self._pick_node(avoid)
            # Jittered: watches started together would otherwise all time out together, every
            # poll_s, and their empty answers and next polls reach the node in one burst.
            wait_s = round(self._poll_s * self._rng.uniform(0.7, 1.0), 3)
            query = {
                "prefix": self.prefix,
                "from": str(self._cursor.next),
                "timeout": f"{wait_s:g}",
                "limit": str(DEFAULT_LIMIT),
            }
            request = Request(p.WATCH, "", None, query)
            try:
                resp = await c._transport.send(node, request, self._poll_s + ANSWER_GRACE_S)
            except TransportError as exc:
                log.info(
                    "watch of prefix %r: %s; asking another node from %d", self.prefix, exc, self._cursor.next
                )
                self._cursor.node = None
                avoid = node
                await asyncio.sleep(backoff.next_delay())
                continue
            if 200 <= resp.status < 300:
                self._cursor.node = node
                if not self.nodes_used or self.nodes_used[-1] != node:
                    self.nodes_used.append(node)
                await self._deliver(resp.body, node)
                return
            err = error_from_body(resp.status, resp.body, node=node, what=request.describe())
            if isinstance(err, Compacted):
                if not self._relist:
                    raise Compacted(
                        f"watch of prefix {self.prefix!r} from revision {self._cursor.next}: {err.message}; "
                        "re-list and watch again from the listing's revision + 1, or use relist=True",
                        code=err.code,
                        node=node,
                        details=err.details,
                    )
                log.info("watch of prefix %r: %s; re-listing", self.prefix, err)
                await self._do_relist()
                return
            if (
                isinstance(err, AuthError | InvalidRequest)
                and err.code is not None
                and not err.code.startswith("http_")
            ):
                raise err  # the caller's mistake: no other node answers differently
            # unavailable, timeout, a node without the route, a proxy's 5xx: another node may do
            log.info("watch of prefix %r: %s; asking another node", self.prefix, err)
            self._cursor.node = None
            avoid = node
            await asyncio.sleep(backoff.next_delay())

    async def _deliver(self, body: Any, node: str) -> None:
        cur = self._cursor
        assert cur.next is not None
        if (
            not isinstance(body, dict)
            or not _is_int(body.get("revision"))
            or not isinstance(body.get("events"), list)
        ):
            raise ServerError(f"node {node} answered a watch poll with {body!r:.200}")
        upto: int = body["revision"]
        last = cur.next - 1
        delivered = 0
        for raw in body["events"]:
            ev = parse_event(raw)
            if ev.revision < cur.next:
                continue  # already delivered (never expected: the node answers from `from`)
            if ev.revision < last or ev.revision > upto:
                raise ServerError(
                    f"node {node} answered a watch of prefix {self.prefix!r} out of order: revision "
                    f"{ev.revision} after {last} (answer complete up to {upto})"
                )
            last = ev.revision
            if cur.skip and ev.type in KEY_EVENTS and ev.revision <= cur.skip.get(ev.key, 0):
                continue  # the re-list already showed this change
            await self._queue.put(ev)
            delivered += 1
        upto = max(upto, last)
        if cur.skip and upto >= cur.skip_until:
            cur.skip = {}
        cur.next = upto + 1
        await self._queue.put(_Done(upto, delivered == 0))
