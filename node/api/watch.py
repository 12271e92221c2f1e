"""Watch: the long poll of ``GET /v1/watch`` and stream op ``watch`` (docs/watch.md).

Events live in the state store's history (node/state/history.py), written by apply. This module
answers polls from it without touching SQLite on the hot path:

    ring      the most recent events (every event with revision >= ``ring_from``, up to the applied
              index), fed by the driver after each applied batch; a live poll is answered from it
    parked    polls with nothing to answer yet, indexed by prefix length then prefix, so that one
              applied event wakes only the polls whose prefix it matches: the cost per event is one
              dict lookup per distinct prefix length, not a loop over every watcher
    ahead     polls from a revision this node has not applied yet (the caller saw more elsewhere),
              in a heap by revision: woken when the node gets there

A poll older than the ring reads the history table, bounded: at most ``limit`` events (whole
revisions) and about ``max_examined`` rows examined per answer, so a rare prefix over a long history
answers an empty page complete up to the last revision examined, never a long scan.

The node holds no buffer per watcher: a parked poll is one future in the index (and, over
``/v1/stream``, one of the connection's ``max_in_flight`` operations; over HTTP, one open
connection of ``max_client_connections``). Retention prunes the oldest whole revisions in bounded
batches from a background task, never inside apply.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter, Gauge

from raftstate.client import protocol as p
from raftstate.node.config import Settings
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.state.history import Event, History, Page
from raftstate.raft import Role

__all__ = ["WatchHub", "WatchLimits", "WatchQuery", "parse_query"]

log = logging.getLogger("raftstate.node.api.watch")

#: ``timeout`` of a poll when the request gives none (seconds)
DEFAULT_WAIT_S: Final = 10.0
#: ``limit`` of a poll when the request gives none (events)
DEFAULT_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """The node's watch settings (node/config.py ``Settings.watch_*``) and the hub's own bounds."""

    max_events: int = 1000  #: largest ``limit`` of one answer (settings.watch_max_events)
    max_wait_s: int = 60  #: longest ``timeout`` of one poll (settings.watch_max_wait_s)
    history_events: int = 100_000  #: events kept (settings.watch_history_events)
    history_bytes: int = 64 << 20  #: bytes of keys and bodies kept (settings.watch_history_bytes)
    history_age_s: int = 3600  #: seconds of cluster time kept (settings.watch_history_age_s)
    max_key_bytes: int = 1024  #: longest prefix (settings.max_key_bytes)
    #: recent events held in memory for live polls
    ring_events: int = 10_000
    #: history rows one answer examines at most (plus the rest of the revision it stops in)
    max_examined: int = 10_000
    #: rows one pruning step removes at most (one short transaction, a few ms on the loop)
    prune_batch_rows: int = 1000
    #: how often the pruning task looks at the retention
    prune_interval_s: float = 1.0

    @classmethod
    def of(cls, s: Settings) -> WatchLimits:
        """The limits of a node with settings ``s`` (node/config.py)."""
        return cls(
            max_events=s.watch_max_events,
            max_wait_s=s.watch_max_wait_s,
            history_events=s.watch_history_events,
            history_bytes=s.watch_history_bytes,
            history_age_s=s.watch_history_age_s,
            max_key_bytes=s.max_key_bytes,
        )

    def __post_init__(self) -> None:
        assert self.max_events >= 1 and self.max_wait_s >= 1 and self.ring_events >= 1
        assert self.history_events >= 1 and self.history_bytes >= 1 and self.history_age_s >= 1
        assert self.max_examined >= 1 and self.prune_batch_rows >= 1 and self.prune_interval_s > 0


@dataclass(frozen=True, slots=True)
class WatchQuery:
    prefix: str
    #: the first revision wanted; None: answer the current revision at once (the start of a watch)
    from_rev: int | None
    limit: int
    wait_s: float
    stale: bool


def parse_query(query: Mapping[str, str], lim: WatchLimits) -> WatchQuery:
    """The query of one poll, validated; ``limit`` and ``timeout`` above the node's maximum are
    reduced to it (as every ``timeout`` is), so a client need not know the node's settings."""
    what = p.WATCH.describe()
    unknown = sorted(set(query) - set(p.WATCH.query))
    if unknown:
        known = ", ".join(p.WATCH.query)
        raise Refusal(p.INVALID_REQUEST, f"{what}: unknown parameter {unknown[0]!r}; known: {known}")
    prefix = query.get("prefix", "")
    n = len(prefix.encode("utf-8", "surrogatepass"))
    if n > lim.max_key_bytes:
        raise Refusal(
            p.KEY_TOO_LARGE,
            f"{what}: prefix of {n} bytes exceeds the limit of {lim.max_key_bytes} bytes "
            "(settings.max_key_bytes); no key can start with it",
            limit=lim.max_key_bytes,
        )
    from_rev = _whole(query, "from", what, 1) if "from" in query else None
    limit = min(_whole(query, "limit", what, 1) if "limit" in query else DEFAULT_LIMIT, lim.max_events)
    text = query.get("timeout")
    wait = DEFAULT_WAIT_S
    if text is not None:
        try:
            wait = float(text)
        except ValueError:
            wait = math.nan
        if not math.isfinite(wait) or wait < 0:
            raise Refusal(
                p.INVALID_REQUEST,
                f"{what}: timeout={text[:40]!r}: give the seconds to wait for an event (0 or more; "
                f"at most {lim.max_wait_s}, settings.watch_max_wait_s)",
                field="timeout",
            )
    consistency = query.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise Refusal(
            p.INVALID_REQUEST,
            f"{what}: consistency={consistency[:40]!r}: use linearizable (default) or stale",
            field="consistency",
        )
    return WatchQuery(prefix, from_rev, limit, min(wait, lim.max_wait_s), consistency == "stale")


def _whole(query: Mapping[str, str], name: str, what: str, least: int) -> int:
    text = query[name]
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()) or int(text) < least:
        raise Refusal(
            p.INVALID_REQUEST, f"{what}: {name}={text[:40]!r}: give a whole number >= {least}", field=name
        )
    return int(text)


class _Poll:
    """One parked poll: woken (its future done) when an event under its prefix is applied, when
    the node reaches its revision, or when the node shuts down."""

    __slots__ = ("future", "prefix", "woken")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: set by every wake, also once the wait timed out (the timeout cancels ``future``)
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        if not self.future.done():
            self.future.set_result(None)


class WatchHub:
    """Parked polls, the ring of recent events, and the pruning task of one node."""

    def __init__(
        self,
        driver: Any,
        limits: WatchLimits,
        metrics: NodeMetrics,
        *,
        store_maintenance: Callable[[Callable[[], None]], Awaitable[None]] | None = None,
    ) -> None:
        """``driver``: the node's RaftDriver (its ``sm``, ``raft``, ``id``), which calls
        :meth:`on_batch` after each applied batch; ``store_maintenance``: runs a short write to the
        store between applies (``RaftDriver.store_maintenance``; None: no pruning)."""
        self.driver = driver
        self._maintenance = store_maintenance
        self.limits = limits
        #: the ring: events with revision >= ``_ring_from``, up to the applied index, in order
        self._ring: list[Event] = []
        self._ring_revs: list[int] = []
        self._ring_from = 0
        self._ring_max = min(limits.ring_events, limits.history_events)
        #: the history (and its generation) the ring was filled from: a new store, or a snapshot
        #: taken up, starts the ring over (None: not filled yet; the driver is not read before)
        self._source: tuple[History, int] | None = None
        #: prefix length -> prefix -> polls parked on it
        self._by_len: dict[int, dict[str, set[_Poll]]] = {}
        #: (from revision, n, poll): polls waiting for this node to apply that far
        self._ahead: list[tuple[int, int, _Poll]] = []
        self._n = itertools.count()
        #: the applied index the ring (and the wake-ups of parked polls) has reached
        self._synced = 0
        self._parked = 0
        self._closing = False
        r = metrics.registry
        Gauge("raftstate_watch_parked", "Watch polls parked on this node", registry=r).set_function(
            lambda: self._parked
        )
        self.delivered = Counter(
            "raftstate_watch_events_delivered", "Events answered to watch polls", registry=r
        )
        Gauge("raftstate_watch_history_events", "Events kept in the history table", registry=r).set_function(
            lambda: self.driver.sm.history.events
        )
        Gauge(
            "raftstate_watch_history_oldest_revision",
            "The oldest revision a watch can start from on this node",
            registry=r,
        ).set_function(lambda: self.driver.sm.history.oldest)
        self.pruned = Counter(
            "raftstate_watch_history_pruned_events", "History events removed by retention", registry=r
        )

    # ----------------------------------------------------------------- the aiohttp app's lifetime

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The pruning task, for as long as the node serves (the app's cleanup context)."""
        if self._maintenance is None:
            yield
            return
        task = asyncio.create_task(self._prune_loop(), name=f"watch-prune-{self.driver.id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """Answer every parked poll now (a progress answer), so shutting down waits for none."""
        self._closing = True
        for by_prefix in self._by_len.values():
            for polls in by_prefix.values():
                for poll in polls:
                    poll.wake()
        for _, _, poll in self._ahead:
            poll.wake()

    # ----------------------------------------------------------------- fed by the driver

    def on_batch(self) -> None:
        """After each applied batch (committed to the store): take its events into the ring and wake
        the polls they concern. Cost: one dict lookup per event and distinct prefix length."""
        self._sync()
        ahead = self._ahead
        applied = self.driver.sm.applied_index
        while ahead and ahead[0][0] <= applied + 1:
            heapq.heappop(ahead)[2].wake()

    def _sync(self) -> list[Event]:
        """Bring the ring up to the applied index; returns the events added."""
        history: History = self.driver.sm.history
        new = history.take_new()
        if self._source is None or self._source[0] is not history or self._source[1] != history.generation:
            # A received store was installed, or a whole-state snapshot taken up: the ring's events
            # belong to the history that was replaced. Start over; wake every poll to re-check.
            self._source = (history, history.generation)  # held: an id() could be reused
            self._ring.clear()
            self._ring_revs.clear()
            self._ring_from = new[0].revision if new else self.driver.sm.applied_index + 1
            self._wake_all()
        self._ring.extend(new)
        self._ring_revs.extend(ev.revision for ev in new)
        if len(self._ring) > self._ring_max + self._ring_max // 4:
            self._trim()
        # Whoever syncs (the driver's batch hook or a poll), the parked polls an event concerns are
        # woken by it: so a parked poll that was never woken saw nothing under its prefix up to
        # ``_synced`` — its progress answer needs no scan of the events of its wait.
        by_len = self._by_len
        if by_len:
            for ev in new:
                key = ev.key
                for length, by_prefix in by_len.items():
                    polls = by_prefix.get(key[:length]) if len(key) >= length else None
                    if polls:
                        for poll in polls:
                            poll.wake()
        self._synced = self.driver.sm.applied_index
        return new

    def _trim(self) -> None:
        """Drop the oldest whole revisions down to at most ``_ring_max`` events."""
        cut = len(self._ring) - self._ring_max
        rev = self._ring_revs[cut]
        cut = bisect.bisect_left(self._ring_revs, rev)  # never split a revision
        if cut == 0:
            cut = bisect.bisect_right(self._ring_revs, rev)
        self._ring_from = self._ring_revs[cut - 1] + 1
        del self._ring[:cut]
        del self._ring_revs[:cut]

    def _wake_all(self) -> None:
        for by_prefix in self._by_len.values():
            for polls in by_prefix.values():
                for poll in polls:
                    poll.wake()

    # ----------------------------------------------------------------- one poll

    async def watch(self, q: WatchQuery, read_barrier: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        """The answer to one poll (docs/watch.md); raises Refusal (``compacted``, a failed barrier)."""
        sm = self.driver.sm
        if q.from_rev is None:
            if not q.stale and self.driver.raft.role == Role.LEADER:
                await read_barrier()  # every change acknowledged before the call is <= the answer
            return {"events": [], "revision": sm.applied_index}
        from_rev = q.from_rev
        loop = asyncio.get_running_loop()
        deadline = loop.time() + q.wait_s
        while True:
            self._sync()
            applied = sm.applied_index
            if from_rev <= applied:
                page = self._page(q.prefix, from_rev, q.limit, applied)
                if page.events or page.revision < applied:
                    return self._answer(page)
                from_rev = applied + 1  # nothing under the prefix up to applied
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                # The progress answer: nothing under the prefix up to here (the caller's own
                # from - 1 when this node is behind it: it knew that much already).
                return {"events": [], "revision": from_rev - 1}
            poll = _Poll(q.prefix)
            self._park(poll, from_rev, applied)
            try:
                async with asyncio.timeout(remaining):
                    await poll.future
            except TimeoutError:
                self._sync()  # still parked: an event under the prefix applied just now wakes it
                if not poll.woken and from_rev <= applied + 1:  # parked by prefix, never woken
                    # Never woken: nothing under the prefix from from_rev (<= the applied index
                    # when it parked, + 1) up to _synced (>= that applied index). The
                    # progress answer, without scanning the (unrelated) events of the wait.
                    return {"events": [], "revision": self._synced}
            finally:
                self._unpark(poll, from_rev, applied)

    def _page(self, prefix: str, from_rev: int, limit: int, applied: int) -> Page:
        history: History = self.driver.sm.history
        if from_rev < history.oldest:
            raise Refusal(
                p.COMPACTED,
                f"watch from revision {from_rev}: node {self.driver.id} keeps history only from revision "
                f"{history.oldest} (settings.watch_history_events/_bytes/_age_s, or it took up a "
                f"snapshot); re-list the keys under {prefix!r} and watch from the listing's revision + 1",
                oldest=history.oldest,
                revision=applied,
            )
        if from_rev >= self._ring_from:
            return self._ring_page(prefix, from_rev, limit, applied)
        return history.read(prefix, from_rev, applied, limit, self.limits.max_examined)

    def _ring_page(self, prefix: str, from_rev: int, limit: int, applied: int) -> Page:
        """As :meth:`History.read`, from the ring (every event >= ``_ring_from`` is in it)."""
        events: list[Event] = []
        ring = self._ring
        start = bisect.bisect_left(self._ring_revs, from_rev)
        end = min(len(ring), start + self.limits.max_examined)
        if end < len(ring):  # examine whole revisions only
            end = bisect.bisect_right(self._ring_revs, self._ring_revs[end - 1], lo=start)
        for i in range(start, end):
            ev = ring[i]
            if not ev.key.startswith(prefix):
                continue
            if len(events) >= limit and ev.revision != events[-1].revision:
                return Page(events, events[-1].revision)
            events.append(ev)
        upto = applied if end == len(ring) else self._ring_revs[end - 1]
        return Page(events, upto)

    def _answer(self, page: Page) -> dict[str, Any]:
        self.delivered.inc(len(page.events))
        return {"events": [ev.wire() for ev in page.events], "revision": page.revision}

    def _park(self, poll: _Poll, from_rev: int, applied: int) -> None:
        self._parked += 1
        if from_rev > applied + 1:
            heapq.heappush(self._ahead, (from_rev, next(self._n), poll))
            return
        by_prefix = self._by_len.setdefault(len(poll.prefix), {})
        by_prefix.setdefault(poll.prefix, set()).add(poll)

    def _unpark(self, poll: _Poll, from_rev: int, applied: int) -> None:
        self._parked -= 1
        if from_rev > applied + 1:
            if not poll.future.done():  # still in the heap (a woken one was popped)
                self._ahead = [item for item in self._ahead if item[2] is not poll]
                heapq.heapify(self._ahead)
            return
        length = len(poll.prefix)
        by_prefix = self._by_len[length]
        polls = by_prefix[poll.prefix]
        polls.discard(poll)
        if not polls:
            del by_prefix[poll.prefix]
            if not by_prefix:
                del self._by_len[length]

    # ----------------------------------------------------------------- retention

    async def _prune_loop(self) -> None:
        """Keep the history within its retention: one bounded step at a time, under the driver's
        apply lock (never inside apply, never a long delete on the loop)."""
        lim = self.limits
        while True:
            await asyncio.sleep(lim.prune_interval_s)
            try:
                while await self.prune_step():
                    await asyncio.sleep(0)  # heartbeats and applies go on between steps
            except Exception:
                log.exception("node %s: pruning the watch history failed; will retry", self.driver.id)

    async def prune_step(self) -> int:
        """One bounded pruning step if the history is over its retention; returns events removed."""
        lim = self.limits
        removed = 0

        def step() -> None:
            nonlocal removed
            sm = self.driver.sm
            min_time_ms = sm.time_ms - lim.history_age_s * 1000
            removed = sm.history.prune_step(
                lim.history_events, lim.history_bytes, min_time_ms, lim.prune_batch_rows
            )

        assert self._maintenance is not None, "pruning needs the driver's store_maintenance"
        await self._maintenance(step)
        if removed:
            self.pruned.inc(removed)
        return removed
