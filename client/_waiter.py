"""Waiting for someone else's lock or once() claim to go: woken by its watch event, not by polling.

A ``lock()`` waiter or a ``once()`` waiter that finds the name taken opens a watch of that name
(docs/watch.md) and retries the moment an event says it may have gone — ``lock_release`` or
``lock_expire`` of the lock; ``put``, ``delete`` or ``expire`` of the once() key — instead of
polling every 50 ms::

    attempt ── taken ──► start a watch (revision R) ──► attempt again at once ── taken ──► wait:
        an event of that name after R ........... attempt again
        SAFETY_POLL_S without one ............... attempt again (the safety net)

The watch starts AFTER the first refusal (an uncontended call pays nothing) and the retry right
after it covers a release between the two; every later change has a revision above R, so it is
seen. A cluster that cannot serve the watch (an older node), or a watch that fails, falls back to
the jittered polling of before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from raftstate.client._retry import Backoff
from raftstate.client.errors import RaftStateError
from raftstate.client.watch import Event, Watch

if TYPE_CHECKING:
    from raftstate.client.async_client import AsyncClient

log = logging.getLogger("raftstate.client")

#: a waiter re-tries at least this often even without an event (a lost watch never strands it)
SAFETY_POLL_S: Final = 1.0
#: a watch that has not started within this long is given up for polling
START_TIMEOUT_S: Final = 2.0
#: False: wait by polling as before watch existed (scripts/lock_handover.py measures both)
USE_WATCH = True
LOCK_GONE: Final = frozenset({"lock_release", "lock_expire"})
KEY_CHANGED: Final = frozenset({"put", "delete", "expire"})


class ChangeWaiter:
    """Waits for an event of ``types`` on exactly ``name`` (or the safety poll, or the fallback)."""

    def __init__(self, client: AsyncClient, name: str, types: frozenset[str], backoff: Backoff) -> None:
        self._client = client
        self._name = name
        self._types = types
        self._backoff = backoff  #: the polling of before, when there is no watch
        self._watch: Watch | None = None
        self._reader: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self.started = False  #: start() was called (whether or not a watch runs)
        self.watching = False  #: events wake it (False: it polls)

    async def start(self) -> None:
        """Begin watching the name; call it after the first refusal, then attempt again at once."""
        self.started = True
        if not USE_WATCH:
            return
        w: Watch | None = None
        try:
            w = self._client.watch(self._name, node=self._client.leader)
            await asyncio.wait_for(w.started(), START_TIMEOUT_S)
        except (RaftStateError, TimeoutError) as exc:
            log.debug("waiting on %r by polling: no watch (%s)", self._name, exc)
            if w is not None:
                await w.close()
            return
        self._watch = w
        self.watching = True
        self._reader = asyncio.get_running_loop().create_task(
            self._read(w), name=f"raftstate-wait-{self._name}"
        )

    async def _read(self, w: Watch) -> None:
        try:
            async for item in w:
                if isinstance(item, Event) and item.key == self._name and item.type in self._types:
                    self._woken.set()
        except RaftStateError as exc:  # compacted, the client closed...: poll from now on
            log.debug("waiting on %r: the watch stopped (%s); polling", self._name, exc)
        self.watching = False
        self._woken.set()

    async def wait(self, at_most_s: float | None) -> None:
        """Until an event may have freed the name (or the safety poll; the backoff without a watch)."""
        if not self.watching:
            delay = self._backoff.next_delay()
            await asyncio.sleep(delay if at_most_s is None else min(delay, at_most_s))
            return
        bound = SAFETY_POLL_S if at_most_s is None else min(SAFETY_POLL_S, at_most_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), bound)
        self._woken.clear()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._watch is not None:
            await self._watch.close()
