"""Logging of malformed HTTP requests: one line, not a traceback.

aiohttp answers a request it cannot parse (a control byte in the path, a broken header) with 400,
and then logs it on ``aiohttp.server`` at ERROR *with a traceback* — a client's mistake that looks
like a node bug, and that anyone can repeat to flood the log. :class:`MalformedRequestFilter`
rewrites such records into one WARNING line naming the problem, and lets at most one through per
second (the rest are counted into the next line). Any other record passes unchanged."""

from __future__ import annotations

import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["MalformedRequestFilter", "install"]


class MalformedRequestFilter(logging.Filter):
    def __init__(self, min_interval_s: float = 1.0) -> None:
        super().__init__()
        self.min_interval_s = min_interval_s
        self._last = float("-inf")
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            self._suppressed += 1
            return False
        self._last = now
        problem = " ".join(str(exc.message).split())[:200]
        also = f" ({self._suppressed} more since the last such line)" if self._suppressed else ""
        self._suppressed = 0
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused a malformed HTTP request (answered %s): %s%s"
        record.args = (exc.code, problem, also)
        record.exc_info = None
        record.exc_text = None
        return True


def install() -> None:
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
