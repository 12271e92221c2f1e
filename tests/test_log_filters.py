"""A malformed request is logged as one rate-limited warning line; other records pass unchanged."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import InvalidURLError

from raftstate.node.runtime.log_filters import MalformedRequestFilter


def _record(exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), info)


def test_a_parse_error_becomes_one_warning_line_without_traceback() -> None:
    f = MalformedRequestFilter()
    rec = _record(InvalidURLError("Invalid char in url path"))
    assert f.filter(rec)
    assert rec.levelno == logging.WARNING and rec.exc_info is None
    assert "malformed HTTP request (answered 400)" in rec.getMessage()


def test_a_flood_is_rate_limited_and_counted() -> None:
    f = MalformedRequestFilter(min_interval_s=3600)
    assert f.filter(_record(InvalidURLError("x")))
    assert not any(f.filter(_record(InvalidURLError("x"))) for _ in range(5))
    f.min_interval_s = 0
    last = _record(InvalidURLError("x"))
    assert f.filter(last) and "5 more since the last such line" in last.getMessage()


def test_other_errors_pass_untouched() -> None:
    f = MalformedRequestFilter()
    rec = _record(RuntimeError("a real bug"))
    assert f.filter(rec) and rec.levelno == logging.ERROR and rec.exc_info is not None
    assert f.filter(_record(None))
