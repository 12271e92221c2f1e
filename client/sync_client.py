"""Client: the blocking, thread-safe face of :class:`~raftstate.client.AsyncClient`.

There is no second copy of the logic: a ``Client`` owns one private event loop on a daemon thread
and one AsyncClient living on it; every method submits the matching coroutine to that loop and
waits for its result. Any number of threads may call one Client at once — their calls run
concurrently on the loop (sharing its connection pool and session). Ctrl-C in a waiting thread
cancels that call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from raftstate.client._lock import Lock
from raftstate.client._time import Ttl, When
from raftstate.client._types import Consistency, Entry, Fence, LockInfo, LockLease
from raftstate.client.async_client import AsyncClient
from raftstate.client.config import client_args
from raftstate.client.errors import ClientClosed
from raftstate.client.watch import Event, Progress, Snapshot, Watch

__all__ = ["Client", "SyncLock"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="raftstate-client-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a blocking Client method was called from its own event loop (e.g. in a callback)"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # KeyboardInterrupt in the caller: stop the call on the loop too
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class SyncLock:
    """A held lock, for blocking code. Mirrors :class:`~raftstate.client.Lock`; safe to read from
    any thread while the client's loop renews it in the background."""

    def __init__(self, lock: Lock, loop: _LoopThread) -> None:
        self._lock = lock
        self._loop = loop
        self._lost = threading.Event()
        loop.loop.call_soon_threadsafe(lock.add_lost_callback, lambda _: self._lost.set())

    @property
    def name(self) -> str:
        return self._lock.name

    @property
    def token(self) -> int:
        return self._lock.token

    @property
    def owner(self) -> str:
        return self._lock.owner

    @property
    def expires_at(self) -> datetime | None:
        return self._lock.expires_at

    @property
    def lost(self) -> bool:
        return self._lock.lost

    @property
    def lost_reason(self) -> str | None:
        return self._lock.lost_reason

    def check(self) -> None:
        """Raise LockLost if the lock is lost."""
        self._lock.check()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lock is lost (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else self._loop.loop.time() + timeout
        while not self._lock.lost:
            step = 0.05 if deadline is None else min(0.05, deadline - self._loop.loop.time())
            if step <= 0:
                return False
            self._lost.wait(step)
        return True

    # A SyncLock is a fence too: writes passed fence=lock send its name and token.
    def __repr__(self) -> str:
        return repr(self._lock).replace("<Lock", "<SyncLock", 1)


class Client:
    """Blocking raftstate client with the same API as AsyncClient. Thread-safe.

    ``with Client([...]) as state: state.set("k", 1)`` or call :meth:`close`. Arguments as for
    :class:`~raftstate.client.AsyncClient`."""

    def __init__(self, endpoints: Sequence[str] | str, **kwargs: Any) -> None:
        self._async = AsyncClient(endpoints, **kwargs)  # binds to no loop until first used
        self._loop = _LoopThread()
        self._close_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] = "cluster.yaml", **kwargs: Any) -> Self:
        """A client for the nodes of a cluster file; see :meth:`AsyncClient.from_config`."""
        endpoints, kw = client_args(path, kwargs)
        return cls(endpoints, **kw)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClientClosed("this raftstate client is closed; create a new one")
        return self._loop.run(coro)

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the client session (best effort, see :meth:`AsyncClient.close`), close connections and
        stop the client's thread. Further calls raise ClientClosed."""
        with self._close_lock:
            if self._closed:
                return
            self._loop.run(self._async.close())
            self._closed = True
            self._loop.stop()

    @property
    def endpoints(self) -> list[str]:
        return self._async.endpoints

    @property
    def leader(self) -> str | None:
        return self._async.leader

    @property
    def session(self) -> int | None:
        return self._async.session

    @property
    def owner(self) -> str:
        return self._async.owner

    def wait_for_leader(self, timeout: float | None = None) -> str:
        return self._run(self._async.wait_for_leader(timeout))

    # ----------------------------------------------------------------- keys

    def get(
        self,
        key: str,
        default: Any = None,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> Any:
        return self._run(self._async.get(key, default, consistency=consistency, timeout=timeout))

    def get_entry(
        self, key: str, *, consistency: Consistency = "linearizable", timeout: float | None = None
    ) -> Entry | None:
        return self._run(self._async.get_entry(key, consistency=consistency, timeout=timeout))

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl | None = None,
        expires_at: When | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._run(
            self._async.set(key, value, ttl=ttl, expires_at=expires_at, fence=_fence(fence), timeout=timeout)
        )

    def set_if_absent(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl | None = None,
        expires_at: When | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> bool:
        return self._run(
            self._async.set_if_absent(
                key, value, ttl=ttl, expires_at=expires_at, fence=_fence(fence), timeout=timeout
            )
        )

    def compare_and_set(
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
        return self._run(
            self._async.compare_and_set(
                key,
                value,
                version=version,
                ttl=ttl,
                expires_at=expires_at,
                fence=_fence(fence),
                timeout=timeout,
            )
        )

    def delete(
        self,
        key: str,
        *,
        version: int | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> bool:
        return self._run(self._async.delete(key, version=version, fence=_fence(fence), timeout=timeout))

    def increment(
        self,
        key: str,
        by: int = 1,
        *,
        ttl: Ttl | None = None,
        fence: Fence | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._run(self._async.increment(key, by, ttl=ttl, fence=_fence(fence), timeout=timeout))

    def keys(
        self,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int | None = None,
        page_size: int = 1000,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> Iterator[str]:
        agen = self._async.keys(
            prefix, after=after, limit=limit, page_size=page_size, consistency=consistency, timeout=timeout
        )
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(agen.aclose())

    # ----------------------------------------------------------------- watch

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        progress: bool = False,
        relist: bool = False,
        node: str | None = None,
    ) -> Iterator[Event | Progress | Snapshot]:
        """Blocking ``AsyncClient.watch``: ``for event in state.watch("imports:42:")``. Stop the
        iteration (break, close the generator) to stop polling."""

        async def make() -> Watch:
            return self._async.watch(prefix, start_revision, progress=progress, relist=relist, node=node)

        w = self._run(make())
        try:
            while True:
                try:
                    yield self._run(w.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(w.close())

    # ----------------------------------------------------------------- locks

    @contextmanager
    def lock(
        self, name: str, ttl: Ttl = 10.0, *, timeout: float | None = None, owner: str | None = None
    ) -> Iterator[SyncLock]:
        """``with state.lock(name, ttl=10) as lock:`` — see AsyncClient.lock."""
        ctx = self._async.lock(name, ttl, timeout=timeout, owner=owner)
        lock = self._run(ctx.__aenter__())
        try:
            yield SyncLock(lock, self._loop)
        except BaseException as exc:
            self._run(ctx.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self._run(ctx.__aexit__(None, None, None))

    def acquire_lock(
        self, name: str, ttl: Ttl = 10.0, *, owner: str | None = None, timeout: float | None = None
    ) -> LockLease:
        return self._run(self._async.acquire_lock(name, ttl, owner=owner, timeout=timeout))

    def renew_lock(
        self, name: str, token: int, ttl: Ttl | None = None, *, timeout: float | None = None
    ) -> datetime | None:
        return self._run(self._async.renew_lock(name, token, ttl, timeout=timeout))

    def release_lock(self, name: str, token: int, *, timeout: float | None = None) -> bool:
        return self._run(self._async.release_lock(name, token, timeout=timeout))

    def lock_info(self, name: str, *, timeout: float | None = None) -> LockInfo | None:
        return self._run(self._async.lock_info(name, timeout=timeout))

    # ----------------------------------------------------------------- once

    @contextmanager
    def once(self, key: str, ttl: Ttl, *, claim_ttl: Ttl = 30.0, wait: float | None = None) -> Iterator[bool]:
        """``with state.once(key, ttl=7 * 86400) as first_time:`` — see AsyncClient.once."""
        ctx = self._async.once(key, ttl, claim_ttl=claim_ttl, wait=wait)
        first = self._run(ctx.__aenter__())
        try:
            yield first
        except BaseException as exc:
            self._run(ctx.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self._run(ctx.__aexit__(None, None, None))


def _fence(fence: Fence | None) -> Fence | None:
    """A SyncLock fences as the Lock it wraps (so a lost lock is refused locally too)."""
    return fence._lock if isinstance(fence, SyncLock) else fence
