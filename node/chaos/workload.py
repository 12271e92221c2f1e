"""Concurrent workers that drive the cluster through the real client library and record every
operation into the history. One ``AsyncClient`` per worker (each a separate "process" in the
history, as each would be a separate job worker in production).

How a client outcome becomes a history status: a result → ``ok``; ``Unavailable`` and refusals
(``LockHeld``, ``LockLost``, ``InvalidRequest``...) → ``fail`` (the write was certainly not applied);
``OutcomeUnknown`` or anything unexpected → ``info`` for writes. A read that raised is ``fail``:
a read has no effect, so the checkers need not consider it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raftstate.client import AsyncClient
from raftstate.client.errors import (
    InvalidRequest,
    LockHeld,
    LockLost,
    NotFound,
    RaftStateError,
    Unavailable,
    VersionMismatch,
)
from raftstate.node.chaos.history import History, Op
from raftstate.node.chaos.watchers import DEFAULT_WATCHERS, WatcherSpec

REFUSALS = (Unavailable, LockHeld, LockLost, InvalidRequest, VersionMismatch, NotFound)


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    registers: int = 3  #: hot register keys, shared by the register workers
    register_workers: int = 3
    reader_workers: int = 2  #: only read the registers (like a dashboard polling progress)
    counters: int = 2
    counter_workers: int = 2
    locks: int = 1
    lock_workers: int = 2
    claim_workers: int = 3
    ttl_workers: int = 1
    unique_workers: int = 1
    call_timeout_s: float = 5.0  #: each client call's deadline (then Unavailable / OutcomeUnknown)
    pause_s: float = 0.02  #: think time between a worker's ops (keeps 2 cores usable)
    lock_ttl_s: float = 2.0
    marker_ttl_s: float = 6.0  #: TTL markers expire this long after they are written
    #: watchers of a few prefixes (node/chaos/watchers.py), checked by checkers/watch.py
    watchers: tuple[WatcherSpec, ...] = DEFAULT_WATCHERS


def register_key(i: int) -> str:
    return f"reg:{i}"


def counter_key(i: int) -> str:
    return f"ctr:{i}"


def lock_name(i: int) -> str:
    return f"lock{i}"


def lock_data_key(name: str) -> str:
    return f"{name}:data"


class Workers:
    """Runs every worker until :meth:`stop`; ``history`` receives every op."""

    def __init__(self, endpoints: Sequence[str], history: History, cfg: WorkloadConfig, seed: int) -> None:
        self.endpoints = list(endpoints)
        self.history = history
        self.cfg = cfg
        self.seed = seed
        self._stop = asyncio.Event()
        self._clients: list[AsyncClient] = []
        self._seq = 0  # run-wide sequence number: makes every written value unique
        self._claim_next: dict[str, int] = {}
        self._markers: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stop.set()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def run(self) -> None:
        c = self.cfg
        jobs: list[Awaitable[None]] = []
        specs: list[tuple[str, int, Callable[[AsyncClient, str, random.Random], Awaitable[None]]]] = [
            ("reg", c.register_workers, self._register_worker),
            ("reader", c.reader_workers, self._reader_worker),
            ("ctr", c.counter_workers, self._counter_worker),
            ("lock", c.lock_workers, self._lock_worker),
            ("claim", c.claim_workers, self._claim_worker),
            ("ttl", c.ttl_workers, self._ttl_worker),
            ("uniq", c.unique_workers, self._unique_worker),
        ]
        n = 0
        for prefix, count, body in specs:
            for i in range(count):
                name = f"{prefix}{i}"
                client = AsyncClient(self.endpoints, timeout=c.call_timeout_s, owner=name)
                self._clients.append(client)
                jobs.append(self._loop(body, client, name, random.Random(self.seed * 1000 + n)))
                n += 1
        try:
            await asyncio.gather(*jobs)
            await asyncio.gather(*self._markers)
        finally:
            for client in self._clients:
                await client.close()

    async def _loop(
        self,
        body: Callable[[AsyncClient, str, random.Random], Awaitable[None]],
        client: AsyncClient,
        name: str,
        rng: random.Random,
    ) -> None:
        while not self._stop.is_set():
            await body(client, name, rng)
            await asyncio.sleep(rng.uniform(0, 2 * self.cfg.pause_s))

    # ------------------------------------------------------------------ recording

    async def _write(self, op: Op, call: Awaitable[Any], result: Callable[[Any], Any] = lambda r: r) -> Any:
        try:
            out = await call
        except REFUSALS as exc:
            self.history.complete(op, "fail", error=f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:  # OutcomeUnknown, or anything we cannot rule out having applied
            self.history.complete(op, "info", error=f"{type(exc).__name__}: {exc}")
            return None
        self.history.complete(op, "ok", result(out))
        return out

    async def _read(self, op: Op, call: Awaitable[Any], result: Callable[[Any], Any]) -> tuple[bool, Any]:
        try:
            out = await call
        except (RaftStateError, OSError) as exc:
            self.history.complete(op, "fail", error=f"{type(exc).__name__}: {exc}")
            return False, None
        self.history.complete(op, "ok", result(out))
        return True, out

    # ------------------------------------------------------------------ workers

    async def _register_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        """Reads, writes and compare-and-sets of unique values on a few hot keys."""
        key = register_key(rng.randrange(self.cfg.registers))
        roll = rng.random()
        if roll < 0.4:
            op = self.history.invoke(name, "read", key)
            await self._read(op, client.get_entry(key), lambda e: None if e is None else e.value)
            return
        value = f"{name}-{self._next()}"
        if roll < 0.75:
            op = self.history.invoke(name, "write", key, value)
            await self._write(op, client.set(key, value))
            return
        op = self.history.invoke(name, "read", key)
        ok, entry = await self._read(op, client.get_entry(key), lambda e: None if e is None else e.value)
        if not ok or entry is None:
            return
        op = self.history.invoke(name, "cas", key, [entry.value, value])
        await self._write(op, client.compare_and_set(key, value, version=entry.version))

    async def _reader_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        key = register_key(rng.randrange(self.cfg.registers))
        op = self.history.invoke(name, "read", key)
        await self._read(op, client.get_entry(key), lambda e: None if e is None else e.value)

    async def _counter_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        key = counter_key(rng.randrange(self.cfg.counters))
        op = self.history.invoke(name, "incr", key, 1)
        await self._write(op, client.increment(key))

    async def _lock_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        """acquire → one fenced write of (lock, token, owner) → release."""
        lock = lock_name(rng.randrange(self.cfg.locks))
        op = self.history.invoke(name, "acquire", lock)
        lease = await self._write(op, client.acquire_lock(lock, self.cfg.lock_ttl_s), lambda le: le.token)
        if lease is None:
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            return
        value = {"lock": lock, "token": lease.token, "owner": name, "n": self._next()}
        op = self.history.invoke(name, "fenced-write", lock_data_key(lock), value)
        await self._write(op, client.set(lock_data_key(lock), value, fence=lease))
        op = self.history.invoke(name, "release", lock, lease.token)
        await self._write(op, client.release_lock(lock, lease.token))

    async def _claim_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        """Workers race set_if_absent over the same sequence of keys (dd:0, dd:1, ...)."""
        k = self._claim_next.get(name, 0)
        self._claim_next[name] = k + 1
        key = f"dd:{k}"
        op = self.history.invoke(name, "claim", key, f"{name}-{k}")
        await self._write(op, client.set_if_absent(key, f"{name}-{k}"))

    async def _ttl_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        """Start a marker's life every ~0.7 s; several are alive at once."""
        task = asyncio.get_running_loop().create_task(self._marker_life(client, name))
        self._markers.add(task)
        task.add_done_callback(self._markers.discard)
        await asyncio.sleep(rng.uniform(0.5, 0.9))

    async def _marker_life(self, client: AsyncClient, name: str) -> None:
        """Write a marker expiring at an absolute time, then read it before and after that time."""
        n = self._next()
        key = f"ttl:{name}:{n}"
        expires_at = round(time.time() + self.cfg.marker_ttl_s, 3)
        op = self.history.invoke(name, "mark", key, {"expires_at": expires_at})
        if await self._write(op, client.set(key, n, expires_at=expires_at)) is None:
            return
        ttl = self.cfg.marker_ttl_s
        for at in (0.2 * ttl, 0.6 * ttl, 0.9 * ttl, 1.1 * ttl, 1.4 * ttl):
            wait = expires_at - ttl + at - time.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                    return
                except TimeoutError:
                    pass
            op = self.history.invoke(name, "mark-read", key)
            await self._read(op, client.get_entry(key), _marker)

    async def _unique_worker(self, client: AsyncClient, name: str, rng: random.Random) -> None:
        n = self._next()
        key = f"u:{name}:{n}"
        op = self.history.invoke(name, "uwrite", key, n)
        await self._write(op, client.set(key, n))


def _marker(entry: Any) -> Any:
    if entry is None:
        return None
    return {"value": entry.value, "expires_at": entry.expires_at.timestamp() if entry.expires_at else None}
