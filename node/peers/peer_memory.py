"""Which peers this node has EVER heard from, kept across restarts (``<data_dir>/heard_from.json``).

The wiped-voter check (node/peers/join.py) asks the other nodes whether they have heard from a node
that now starts with an empty data dir. The driver's contact table is in memory only; a node that
restarted, or a leader elected after the wiped node died, would forget — and the check would let
the wiped node in. So every id seen is also written here (rarely: once per new id), and
``GET /v1/members`` reports the union.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from aiohttp import web

from raftstate.node.storage.data_dir import atomic_write

__all__ = ["HeardFrom"]

log = logging.getLogger("raftstate.node")

FILE_NAME = "heard_from.json"


class HeardFrom:
    def __init__(
        self, data_dir: Path, seen_now: Callable[[], Iterable[str]], interval_s: float = 1.0
    ) -> None:
        self.path = data_dir / FILE_NAME
        self._seen_now = seen_now
        self._interval_s = interval_s
        self._ids: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            try:
                self._ids = {str(i) for i in json.loads(self.path.read_bytes())}
            except (ValueError, TypeError) as exc:
                log.warning("%s is unreadable (%s); starting it again", self.path, exc)

    def ids(self) -> set[str]:
        return self._ids | set(self._seen_now())

    async def flush(self) -> None:
        new = set(self._seen_now()) - self._ids
        if new:
            ids = self._ids | new
            body = json.dumps(sorted(ids)).encode() + b"\n"
            await asyncio.to_thread(atomic_write, self.path, [body], None)
            self._ids = ids

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except OSError as exc:  # not fatal: the check then knows less; say so
                log.warning("cannot write %s: %s", self.path, exc)

    async def background(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: persist new ids every interval while the app runs."""
        task = asyncio.create_task(self._run(), name="heard-from")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
