"""Expiry arguments and times on the wire.

The wire carries Unix epoch seconds (cluster time) and durations in seconds (docs/api.md, "Time").
Users pass ``ttl`` as seconds or a ``timedelta``, ``expires_at`` as an aware ``datetime`` or epoch
seconds; what comes back is an aware UTC ``datetime``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from raftstate.client import protocol as p
from raftstate.client.errors import InvalidRequest

#: what ``ttl=`` accepts
Ttl = float | int | timedelta
#: what ``expires_at=`` accepts
When = datetime | float | int


def ttl_seconds(ttl: Ttl, *, what: str) -> float:
    """``ttl`` as positive, finite seconds. Raises InvalidRequest naming ``what`` otherwise."""
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise InvalidRequest(
            f"{what}: ttl must be seconds (a number) or a timedelta, got {type(ttl).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"{what}: ttl must be a positive number of seconds, got {seconds!r}")
    return seconds


def epoch_seconds(when: When, *, what: str) -> float:
    """``expires_at`` as epoch seconds. A naive datetime is refused: its time zone is a guess."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidRequest(
                f"{what}: expires_at is a naive datetime; pass an aware one, "
                "e.g. datetime.now(timezone.utc) + timedelta(days=7)"
            )
        return when.timestamp()
    if isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
        return float(when)
    raise InvalidRequest(
        f"{what}: expires_at must be an aware datetime or epoch seconds, got {type(when).__name__}"
    )


def expiry_fields(ttl: Ttl | None, expires_at: When | None, *, what: str) -> dict[str, float]:
    """The optional ``ttl`` / ``expires_at`` body fields of a write (at most one of them: the rule
    the node checks too, raftstate.client.protocol.one_expiry)."""
    problem = p.one_expiry(ttl, expires_at)
    if problem is not None:
        raise InvalidRequest(f"{what}: {problem}")
    if ttl is not None:
        return {"ttl": ttl_seconds(ttl, what=what)}
    if expires_at is not None:
        return {"expires_at": epoch_seconds(expires_at, what=what)}
    return {}


def from_epoch(value: Any) -> datetime | None:
    """An ``expires_at`` from the wire (epoch seconds or null) as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(value, tz=UTC)
    return None
