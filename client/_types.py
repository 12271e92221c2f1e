"""Values the client returns: small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

#: "linearizable": the leader confirms it still leads (ReadIndex) — sees every acknowledged write.
#: "stale": any node's local state, possibly behind; cheaper and available without a quorum.
Consistency = Literal["linearizable", "stale"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value with its metadata."""

    value: Any
    #: log index of the key's last change: pass it as ``version=`` to compare_and_set / delete
    version: int
    #: when the key expires (cluster time, UTC), or None if it never does
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LockLease:
    """A granted lock, as returned by ``acquire_lock`` (no background renewal: renew it yourself)."""

    name: str
    #: fencing token: strictly greater than every token ever issued for this name
    token: int
    owner: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds a lock now (``lock_info``)."""

    name: str
    owner: str
    token: int
    expires_at: datetime | None


class Fence(Protocol):
    """Anything naming a lock and a token: a held ``Lock``, a ``LockLease``. A write passed
    ``fence=`` is applied only while that lock is still held with that token."""

    @property
    def name(self) -> str: ...

    @property
    def token(self) -> int: ...
