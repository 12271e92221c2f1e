"""The node's event loop: uvloop when installed (the optional ``fast`` extra), else asyncio's.

uvloop runs the same asyncio code with its loop, sockets and timers in C; measured on put/get at
64 concurrent it is a direct gain (docs/performance.md). ``RAFTSTATE_EVENT_LOOP=asyncio`` forces the
standard loop (A/B runs, or to rule uvloop out when debugging).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("raftstate.node")


def run(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("RAFTSTATE_EVENT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            log.info("event loop: uvloop")
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)
