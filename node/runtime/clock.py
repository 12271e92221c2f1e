"""NodeClock: this node's wall clock in milliseconds — what it stamps entries with when it leads.

    now_ms() = time.time() in ms + offset_ms

It may jump either way, like the system clock; node/runtime/cluster_time.py keeps the times derived from it
(read times, entry stamps) from ever going backwards.

TEST-ONLY offset (node/test_hooks.py, the clock-offset hook; None in production): given an
``offset_file``, its content (an integer or decimal number of milliseconds, e.g. ``-300000``) is
added to the wall clock. The file is re-read at most once per ``reread_s`` (a tick), so tests can
skew or jump a running node's clock by rewriting it. A missing or unreadable file means offset 0,
with one warning (repeated only after the file was valid again).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["NodeClock"]

log = logging.getLogger("raftstate.node")


class NodeClock:
    def __init__(
        self,
        offset_file: str | os.PathLike[str] | None = None,
        *,
        reread_s: float = 0.05,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.offset_file = Path(offset_file) if offset_file else None
        self.reread_s = reread_s
        self._wall = wall
        self._monotonic = monotonic
        self.offset_ms = 0
        self._read_at: float | None = None
        self._warned = False

    def now_ms(self) -> int:
        if self.offset_file is not None:
            m = self._monotonic()
            if self._read_at is None or m - self._read_at >= self.reread_s:
                self._read_at = m
                self.offset_ms = self._read_offset(self.offset_file)
        return int(self._wall() * 1000) + self.offset_ms

    def _read_offset(self, path: Path) -> int:
        try:
            text = path.read_text(encoding="ascii").strip()
            offset = round(float(text))
            if abs(offset) > 10 * 365 * 86_400_000:
                raise ValueError(f"{offset} ms is more than ten years")
        except (OSError, ValueError, OverflowError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("clock offset file %s unusable (%s): using offset 0", path, exc)
            return 0
        self._warned = False
        return offset
