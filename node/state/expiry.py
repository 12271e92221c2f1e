"""ExpiryIndex: which names (keys, locks, sessions) have expired by a given cluster time.

A min-heap of ``(expires_at_ms, name)`` with lazy deletion: changing or removing a name's expiry
does not touch the heap; a stale heap entry is recognised (its time no longer matches the name's
current expiry) and dropped when it reaches the top. The heap is rebuilt from the live items when
stale entries outnumber them, so it stays O(live items).

This is a *derived* index: it is not in snapshots (restore rebuilds it) and only the leader's
sweeper reads it (:meth:`due`), so it never influences what apply decides.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["ExpiryIndex"]

K = TypeVar("K", str, int)

#: rebuild once the heap holds more than this many entries beyond twice the live count
_SLACK = 1024


class ExpiryIndex(Generic[K]):
    def __init__(self, current: Callable[[K], int | None]) -> None:
        #: ``current(name)``: the name's expiry now (None: gone, or never expires)
        self._current: Callable[[K], int | None] = current
        self._heap: list[tuple[int, K]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(
        self, expires_at_ms: int, name: K, *, size: int, live: Callable[[], Iterable[tuple[int, K]]]
    ) -> None:
        """Note that ``name`` now expires at ``expires_at_ms``. ``size`` is how many names the owner
        holds (an upper bound of the live heap entries); ``live()`` lists every current (expiry,
        name), for the occasional rebuild (amortised O(1) per add)."""
        heapq.heappush(self._heap, (expires_at_ms, name))
        if len(self._heap) > 2 * size + _SLACK:
            self.rebuild(live())

    def rebuild(self, items: Iterable[tuple[int, K]]) -> None:
        self._heap = list(items)
        heapq.heapify(self._heap)

    def due(self, now_ms: int, limit: int) -> list[K]:
        """Up to ``limit`` names whose current expiry is <= ``now_ms``, earliest first. They stay in
        the index until they are really removed (the sweep that removes them may fail)."""
        found: list[tuple[int, K]] = []
        seen: set[K] = set()
        while self._heap and self._heap[0][0] <= now_ms and len(found) < limit:
            t, name = heapq.heappop(self._heap)
            if name in seen or self._current(name) != t:
                continue  # stale: the name changed its expiry or is gone
            seen.add(name)
            found.append((t, name))
        for item in found:
            heapq.heappush(self._heap, item)
        return [name for _, name in found]
