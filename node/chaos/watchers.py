"""Watchers of a chaos run: several prefixes, started at different revisions, on different nodes
(so some on followers), each recording what it yielded (checked by node/chaos/checkers/watch.py).

A watcher is the library's own ``AsyncClient.watch`` — it resumes on another node by itself after
a kill, a pause or a partition. Each uninterrupted watch is one :class:`WatchLog`; if the watch
raises (``compacted``: a node kept less history than it needed; a node that cannot serve it), the
log ends at the revision it was complete up to and a new one begins from the next revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from raftstate.client import AsyncClient, Event, Watch
from raftstate.client.errors import Compacted, RaftStateError
from raftstate.node.chaos.checkers.watch import WatchLog

log = logging.getLogger("raftstate.chaos")


@dataclass(frozen=True, slots=True)
class WatcherSpec:
    prefix: str
    #: "origin": from revision 1 (all history replayed first); "now": from the next change, started
    #: ``delay_s`` into the run; "back": started ``delay_s`` in, from 50 revisions before then
    start: str
    node: int  #: index of the node it polls first
    delay_s: float = 0.0


#: two watchers per prefix, so that each vouches for the other on what acknowledgements cannot
DEFAULT_WATCHERS: tuple[WatcherSpec, ...] = (
    WatcherSpec("reg:", "origin", 0),
    WatcherSpec("reg:", "now", 1, 5.0),
    WatcherSpec("u:", "origin", 2),
    WatcherSpec("u:", "back", 0, 8.0),
    WatcherSpec("lock", "now", 1, 2.0),
    WatcherSpec("lock", "origin", 2, 4.0),
    WatcherSpec("ttl:", "origin", 1),
    WatcherSpec("ttl:", "back", 2, 6.0),
)
#: after the workload stops, how long watchers may take to reach the cluster's revision
CATCH_UP_S = 15.0


class Watchers:
    def __init__(self, endpoints: Sequence[str], specs: Sequence[WatcherSpec], call_timeout_s: float) -> None:
        self.endpoints = list(endpoints)
        self.specs = list(specs)
        self.call_timeout_s = call_timeout_s
        self.logs: list[WatchLog] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._target: int | None = None

    def notes(self) -> list[str]:
        if not self.logs:
            return []
        events = sum(len(w.events) for w in self.logs)
        nodes = len({n for w in self.logs for n in w.nodes})
        out = [
            f"watchers: {len(self.specs)} ({len(self.logs)} uninterrupted watches), {events} events, "
            f"{nodes} nodes polled"
        ]
        out += [f"watcher: {e}" for e in self.errors[:10]]
        return out

    async def run(self) -> None:
        await asyncio.gather(*(self._one(f"watch{i}", s) for i, s in enumerate(self.specs)))

    async def stop(self) -> None:
        """Stop after every watcher caught up with the cluster's revision now (or CATCH_UP_S)."""
        with contextlib.suppress(RaftStateError, TimeoutError):
            async with AsyncClient(self.endpoints, timeout=self.call_timeout_s) as c:
                async with c.watch("") as w:
                    self._target = await asyncio.wait_for(w.started(), CATCH_UP_S)
        self._stop.set()

    async def _one(self, name: str, spec: WatcherSpec) -> None:
        node = self.endpoints[spec.node % len(self.endpoints)]
        async with AsyncClient(self.endpoints, timeout=self.call_timeout_s, owner=name) as client:
            if await self._sleep(spec.delay_s):
                return
            start: int | None = 1
            if spec.start != "origin":
                start = await self._now(client, spec.prefix)
                if start is None:
                    return
                start = max(1, start - 50) if spec.start == "back" else start + 1
            segment = 0
            while not self._stop.is_set():
                assert start is not None
                wlog = WatchLog(f"{name}.{segment}", spec.prefix, start, start - 1)
                self.logs.append(wlog)
                w = client.watch(spec.prefix, start, progress=True, node=node)
                try:
                    await self._follow(w, wlog)
                except Compacted as exc:
                    self.errors.append(f"{wlog.name}: {exc}")
                    start = max(wlog.upto + 1, exc.oldest or 0)  # a new log: the gap is not its
                except RaftStateError as exc:
                    self.errors.append(f"{wlog.name}: {type(exc).__name__}: {exc}")
                    start = wlog.upto + 1
                    await self._sleep(1.0)
                finally:
                    wlog.nodes = list(w.nodes_used)
                    await w.close()
                segment += 1

    async def _follow(self, w: Watch, wlog: WatchLog) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                if self._stop.is_set() and (self._target is None or wlog.upto >= self._target):
                    return
                nxt = asyncio.ensure_future(w.__anext__())
                wait_for = {nxt} if self._stop.is_set() else {nxt, stopping}
                timeout = CATCH_UP_S if self._stop.is_set() else None
                done, _ = await asyncio.wait(wait_for, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    if self._stop.is_set() and timeout is not None:
                        return  # could not catch up in time: the log ends where it got
                    continue
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                if isinstance(item, Event):
                    wlog.events.append((item.revision, item.type, item.key, item.value))
                if w.revision is not None:
                    wlog.upto = max(wlog.upto, w.revision)
        finally:
            stopping.cancel()
            if w.revision is not None:
                wlog.upto = max(wlog.upto, w.revision)

    async def _now(self, client: AsyncClient, prefix: str) -> int | None:
        while not self._stop.is_set():
            try:
                async with client.watch(prefix) as w:
                    return await w.started()
            except RaftStateError as exc:
                self.errors.append(f"start of a {prefix!r} watcher: {exc}")
                if await self._sleep(1.0):
                    return None
        return None

    async def _sleep(self, s: float) -> bool:
        """Sleep ``s`` seconds; True if the run stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), s)
        return self._stop.is_set()
