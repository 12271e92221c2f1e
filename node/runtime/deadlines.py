"""Time out many futures with ONE event-loop timer, instead of one ``wait_for`` (a timer handle,
a shield future and callbacks) per request.

The driver waits on a future per proposal and per linearizable read; at thousands of operations
per second the per-request ``wait_for`` timers were a measured share of the leader's loop
(profile in docs/performance.md). Deadlines here are armed lazily: one ``call_at`` for the
earliest deadline; when it fires, every expired future gets its exception and the timer is
re-armed for the earliest remaining one. A future that completes is simply dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(self) -> None:
        #: future -> (loop time at which it expires, the exception it then gets)
        self._items: dict[asyncio.Future[Any], tuple[float, Callable[[], BaseException]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self, fut: asyncio.Future[Any], timeout_s: float, on_timeout: Callable[[], BaseException]
    ) -> None:
        """``fut`` gets ``on_timeout()`` as its exception unless it is done within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._items[fut] = (deadline, on_timeout)
        if deadline < self._armed_at:
            self._arm(loop, deadline)

    def discard(self, fut: asyncio.Future[Any]) -> None:
        self._items.pop(fut, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        self._handle = loop.call_at(at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle, self._armed_at = None, float("inf")
        now = loop.time()
        earliest = float("inf")
        for fut, (deadline, on_timeout) in list(self._items.items()):
            if fut.done():
                del self._items[fut]
            elif deadline <= now:
                del self._items[fut]
                fut.set_exception(on_timeout())
            else:
                earliest = min(earliest, deadline)
        if earliest != float("inf"):
            self._arm(loop, earliest)
