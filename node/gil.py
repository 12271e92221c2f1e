"""Long pure-Python loops in a worker thread must hand the GIL back often.

A thread that holds the GIL runs until the interpreter's switch interval (5 ms) forces it out, and
the event-loop thread pays up to that wait after EVERY blocking call it makes (select, send,
recv): with a snapshot being built in a thread, the loop slowed to a crawl and followers missed
heartbeats (elections while loading 1M keys). ``yielding`` releases the GIL every ``every`` items
(``time.sleep(0)``), so the loop waits for a few hundred microseconds at most.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def yielding(items: Iterable[T], every: int = 512) -> Iterator[T]:
    assert every > 0
    for i, item in enumerate(items):
        if i % every == 0:
            time.sleep(0)  # releases the GIL: a waiting thread (the event loop) runs now
        yield item
