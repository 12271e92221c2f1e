"""Quotas decided at apply, deterministically: how long a lease may be, how many locks and sessions
one token may hold, and the room kept for admin (issue 18, item 4).

Like ``max_locks``/``max_sessions``, every number here travels *in the command*, stamped by the
leader's API from its settings and the caller's token (node/api/admission.py), so each replica
decides the same way whatever its own cluster.yaml says:

    field (command)           stamped from                         checked at apply
    ----------------------    ---------------------------------    ---------------------------------
    max_ttl_ms                settings.max_lock_ttl_s              a lease (acquire, renew; later a
      (AcquireLock,                                                semaphore or queue lease) longer
       RenewLock)                                                  than it: invalid_request
    caller                    the NAME of the authenticated        recorded on the lock / session
      (AcquireLock,           token (never the secret); absent     (who holds it), counted per name
       OpenSession)           with auth off
    max_per_caller            settings.max_locks_per_token /       ``caller`` already holds that many
                              max_sessions_per_token; absent for   live ones: too_many_locks /
                              an admin token                       too_many_sessions
    max_locks / max_sessions  the cluster-wide limit, less         (the existing count check)
                              :func:`admin_reserve` for a token
                              that is not admin

So writers can fill at most ``limit - admin_reserve(limit)`` of the cluster-wide room: an admin's
acquire or session is never refused by a quota that writers filled, and an admin can always reach
the force-release route (POST /v1/locks/{name}/force-release) to free a lock.

Counting is by *live* entries at the entry's time (expired but unswept ones do not count), so the
answer never depends on when the sweep ran — the same rule as the cluster-wide checks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from raftstate.node.errors import Refusal
from raftstate.node.state.commands import invalid

__all__ = ["ADMIN_RESERVE_DIVISOR", "CallerIndex", "admin_reserve", "check_lease_ttl", "writer_limit"]

#: an admin keeps 1/100 of a cluster-wide limit (at least one slot, when the limit has two or more)
ADMIN_RESERVE_DIVISOR: Final = 100

K = TypeVar("K", bound=Hashable)


def admin_reserve(limit: int) -> int:
    """How many of ``limit`` slots only an admin token may fill: 1%, at least one, and never all
    of them (a limit of 1 keeps nothing back)."""
    assert limit >= 1, limit
    return min(max(1, limit // ADMIN_RESERVE_DIVISOR), limit - 1)


def writer_limit(limit: int) -> int:
    """The cluster-wide limit as a token that is not admin sees it. 1 <= it <= limit."""
    out = limit - admin_reserve(limit)
    assert 1 <= out <= limit, (limit, out)
    return out


def check_lease_ttl(what: str, ttl_ms: int, max_ttl_ms: int | None, setting: str) -> None:
    """Raise invalid_request if a lease of ``ttl_ms`` is longer than ``max_ttl_ms`` (None: no cap).
    The one rule for every lease: locks now, semaphores and queue leases alike. ``setting`` names
    the setting that sets the cap, for the message."""
    if max_ttl_ms is None or ttl_ms <= max_ttl_ms:
        return
    raise invalid(
        f"{what}: a ttl of {ttl_ms / 1000:g} s is longer than the longest lease, {max_ttl_ms / 1000:g} s "
        f"({setting}); ask for a shorter ttl and renew it while you hold the lease",
        limit=max_ttl_ms / 1000,
    )


class CallerIndex(Generic[K]):
    """Which entries (lock names, session ids) each caller (token name) opened. Derived from the
    table it indexes (rebuilt on restore), so it never needs to be in a snapshot."""

    def __init__(self) -> None:
        self._by: dict[str, set[K]] = {}

    def add(self, caller: str | None, key: K) -> None:
        if caller is not None:
            self._by.setdefault(caller, set()).add(key)

    def discard(self, caller: str | None, key: K) -> None:
        if caller is None:
            return
        keys = self._by.get(caller)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by[caller]

    def clear(self) -> None:
        self._by.clear()

    def count(self, caller: str) -> int:
        """Entries recorded for ``caller``, live or not (an upper bound of the live ones)."""
        return len(self._by.get(caller, ()))

    def check_room(
        self,
        caller: str | None,
        limit: int | None,
        live: Callable[[K], bool],
        *,
        code: str,
        what: str,
        setting: str,
    ) -> None:
        """Raise ``code`` (429) if ``caller`` already holds ``limit`` live entries. ``live(key)``: is
        that entry live at the entry's time. No caller or no limit: nothing to check."""
        if caller is None or limit is None or self.count(caller) < limit:
            return
        held = sum(1 for key in self._by.get(caller, ()) if live(key))
        if held >= limit:
            raise Refusal(
                code,
                f"token {caller!r} holds {held} {what}, its quota is {limit} ({setting}); release "
                f"{what} it no longer needs, or give this worker a token of its own",
                limit=limit,
                caller=caller,
            )
