"""A held lock: a lease with a fencing token, renewed in the background, and the moment it is lost.

``async with client.lock(name, ttl=10) as lock`` acquires (waiting up to ``timeout``), then a task
renews the lease every ttl/3. The holder must stop acting on the protected resource as soon as
``lock.lost`` is True; writes passed ``fence=lock`` are refused by the cluster once the lock has
passed to someone else.

When is a lock lost? As soon as the cluster says so (``lock_lost`` on a renew), or — without word
from the cluster — once the lease *might* have run out. The client cannot see the cluster's clock,
so it counts the lease from the moment it SENT the call that granted or renewed it (earlier than the
cluster started it: the safe side), and gives up ``margin_s`` (20% of the ttl) before that runs out:

    lost  <=>  cluster said lock_lost  or  now >= last_sent + ttl - margin

Once lost, a lock never becomes held again; acquire a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from raftstate.client._retry import Backoff, Clock
from raftstate.client._types import LockLease
from raftstate.client.errors import ClientClosed, LockLost, NotFound, RaftStateError

if TYPE_CHECKING:
    from raftstate.client.async_client import AsyncClient

log = logging.getLogger("raftstate.client")

#: share of the ttl given up before the lease's local end (clock-rate differences, time to stop)
MARGIN_SHARE = 0.2
#: renew after this share of the ttl
RENEW_SHARE = 1 / 3


class Lock:
    """A lock held by this process, renewed in the background until released."""

    def __init__(
        self, client: AsyncClient, lease: LockLease, ttl_s: float, sent_at: float, clock: Clock
    ) -> None:
        assert ttl_s > 0
        self._client = client
        self._lease = lease
        self.ttl_s = ttl_s
        self._clock = clock
        #: local time by which the lease surely still holds: sent_at + ttl - margin (the invariant
        #: "renewed_until <= the cluster's expiry" holds while cluster and local clocks run at a rate
        #: within MARGIN_SHARE of each other)
        self.margin_s = ttl_s * MARGIN_SHARE
        self._valid_until = sent_at + ttl_s - self.margin_s
        self._lost_reason: str | None = None
        self._lost_event = asyncio.Event()
        self._callbacks: list[Callable[[Lock], None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._released = False

    # ----------------------------------------------------------------- what the holder reads

    @property
    def name(self) -> str:
        return self._lease.name

    @property
    def token(self) -> int:
        """Fencing token: strictly greater than every token issued before for this name."""
        return self._lease.token

    @property
    def owner(self) -> str:
        return self._lease.owner

    @property
    def expires_at(self) -> datetime | None:
        """The lease's end as the cluster last reported it (cluster time, UTC)."""
        return self._lease.expires_at

    @property
    def lost(self) -> bool:
        """True once the lock is (or may be) no longer held: stop writing. Safe to read from any
        thread (it only reads; the renewal task records the loss)."""
        return self._lost_reason is not None or (not self._released and self._clock() >= self._valid_until)

    @property
    def lost_reason(self) -> str | None:
        if self._lost_reason is not None:
            return self._lost_reason
        return self._expired_reason() if self.lost else None

    def _expired_reason(self) -> str:
        return f"no renewal confirmed for {self.ttl_s - self.margin_s:.1f}s of the {self.ttl_s:g}s lease"

    async def wait_lost(self) -> None:
        """Return once the lock is lost (e.g. race it against the work it protects)."""
        while not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._lost_event.wait(), max(0.0, self._valid_until - self._clock()) + 0.01
                )

    def add_lost_callback(self, callback: Callable[[Lock], None]) -> None:
        """Call ``callback(lock)`` (on the event loop) when the lock is lost; at once if it is."""
        if self.lost:
            callback(self)
        else:
            self._callbacks.append(callback)

    def check(self) -> None:
        """Raise LockLost if the lock is lost."""
        if self.lost:
            raise self._error()

    async def release(self) -> bool:
        """Stop renewing and release the lock. True if the cluster released it for us."""
        await self._stop_renewing()
        if self._released:
            return False
        self._released = True
        try:
            return await self._client.release_lock(self.name, self.token)
        finally:
            self._lost_event.set()

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self._released else "held"
        return f"<Lock {self.name!r} token={self.token} owner={self.owner!r} {state}>"

    # ----------------------------------------------------------------- renewal

    def _start_renewing(self) -> None:
        assert self._renewer is None
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"raftstate-renew-{self.name}"
        )

    async def _stop_renewing(self) -> None:
        t, self._renewer = self._renewer, None
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _renew_loop(self) -> None:
        backoff = Backoff(
            self._client._rng, base_s=min(0.05, self.ttl_s / 20), cap_s=max(0.05, self.ttl_s / 6)
        )
        next_renew = self._clock() + self.ttl_s * RENEW_SHARE
        while True:
            await asyncio.sleep(max(0.0, min(next_renew, self._valid_until) - self._clock()))
            if self.lost:
                self._mark_lost(self._expired_reason())
                return
            sent_at = self._clock()
            try:
                expires_at = await self._client.renew_lock(
                    self.name, self.token, self.ttl_s, timeout=max(0.01, self._valid_until - sent_at)
                )
            except (LockLost, NotFound) as exc:
                self._mark_lost(f"the cluster says so: {exc}")
                return
            except ClientClosed:
                self._mark_lost("the client was closed")
                return
            except RaftStateError as exc:
                log.warning("lock %r (token %d): renewal failed, retrying: %s", self.name, self.token, exc)
                next_renew = self._clock() + backoff.next_delay()
                continue
            backoff.reset()
            if self._clock() >= self._valid_until:  # confirmed too late: `lost` may have been seen; it stays
                self._mark_lost(self._expired_reason())
                return
            self._valid_until = max(self._valid_until, sent_at + self.ttl_s - self.margin_s)
            self._lease = LockLease(self.name, self.token, self.owner, expires_at)
            next_renew = sent_at + self.ttl_s * RENEW_SHARE

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        log.warning("lock %r (token %d) lost: %s", self.name, self.token, reason)
        self._lost_event.set()
        for cb in self._callbacks:
            try:
                cb(self)
            except Exception:  # a callback's bug must not stop the others
                log.exception("lock-lost callback %r failed", cb)
        self._callbacks.clear()

    def _error(self) -> LockLost:
        return LockLost(
            f"lock {self.name!r} (token {self.token}) was lost: {self._lost_reason}",
            details={"name": self.name, "token": self.token},
        )


class LockContext:
    """``async with client.lock(...) as lock``: acquire (waiting), renew, release; raise LockLost at
    exit if the lock was lost while the body ran (unless the body raised something else)."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        ttl_s: float,
        timeout_s: float | None,
        owner: str | None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._client = client
        self._name = name
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._owner = owner
        self._clock = clock
        self._lock: Lock | None = None

    async def __aenter__(self) -> Lock:
        assert self._lock is None, "a LockContext can be entered once"
        self._lock = await self._client._acquire_and_renew(
            self._name, self._ttl_s, self._timeout_s, self._owner
        )
        return self._lock

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lock = self._lock
        assert lock is not None
        lost = lock.lost
        if lost:
            lock._mark_lost(lock.lost_reason or lock._expired_reason())  # record it before releasing
        try:
            await lock.release()
        except RaftStateError as rel:  # the lease runs out by itself; never hide the body's error
            log.warning(
                "lock %r (token %d): release failed (it expires by itself): %s", lock.name, lock.token, rel
            )
        except asyncio.CancelledError:
            raise
        if lost and exc_type is None:
            raise lock._error()
