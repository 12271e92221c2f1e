"""Locks: leases with fencing tokens, decided by cluster time alone.

Rules (``now_ms`` is the time_ms of the entry being applied, so a lease ends *exactly* at its expiry
in cluster time — whichever node applies it, whatever its own clock says):

    held at now_ms          <=>  stored and now_ms < expires_at_ms
    acquire                 free (never held, released, or expired)  -> token = the entry's log index
                            held (by anyone, the same owner too)     -> lock_held, with owner and expiry
    renew(token)            held with that token  -> expires_at = now_ms + ttl (the acquire's by default)
                            otherwise             -> lock_lost
    release(token)          held with that token  -> released: true
                            free                  -> released: false (nothing to release)
                            held with another     -> lock_lost
    fence(lock, token)      a write to a key is applied only if the lock is held with that token,
                            else lock_lost — so a paused ex-holder cannot overwrite its successor

Tokens are log indexes, so every token is greater than every token issued before it for any name
(the "token counter" is the log itself: snapshots carry ``applied_index``). Nothing per name needs to
be remembered once a lock is free.

Timing (the leader stamps entries with its clock; see docs/api.md "Time"): a holder that renews
every ttl/3 keeps the lock through a failover shorter than ttl/2 (its renewal lands before
last renewal + ttl); an abandoned lock is acquirable as soon as cluster time passes last renewal +
ttl, i.e. within ttl + a failover (< 2 election timeouts) when the leader crashes too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    AcquireLock,
    Fence,
    ReleaseLock,
    RenewLock,
    describe_time,
    to_seconds,
)
from raftstate.node.state.expiry import ExpiryIndex
from raftstate.node.state.history import History, body_of

__all__ = ["Lock", "LockTable"]


@dataclass(slots=True)
class Lock:
    owner: str
    #: fencing token: the log index of the acquire
    token: int
    #: cluster time (ms) at which the lease ends
    expires_at_ms: int
    #: the ttl renewals use by default
    ttl_ms: int

    def held_at(self, now_ms: int) -> bool:
        return now_ms < self.expires_at_ms


class LockTable:
    def __init__(self, history: History | None = None) -> None:
        """``history``: where apply records its events (docs/watch.md); None records none."""
        self._history = history
        self.locks: dict[str, Lock] = {}
        self._expiry: ExpiryIndex[str] = ExpiryIndex(self._expiry_of)
        #: names changed since the last :meth:`take_dirty` (the store writes only those rows)
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self.locks)

    # ----------------------------------------------------------------- reads (pure)

    def held(self, name: str, now_ms: int) -> Lock | None:
        lk = self.locks.get(name)
        return lk if lk is not None and lk.held_at(now_ms) else None

    def check_room(self, name: str, now_ms: int, max_locks: int | None) -> None:
        """Raise Refusal (too_many_locks) if acquiring ``name`` would hold more than
        ``max_locks`` locks. Expired but unswept locks do not count (deterministic at apply)."""
        if max_locks is None or len(self.locks) < max_locks or name in self.locks:
            return
        held = sum(1 for lk in self.locks.values() if lk.held_at(now_ms))
        if held >= max_locks:
            raise Refusal(
                p.TOO_MANY_LOCKS,
                f"lock {name!r}: {held} locks are held, the limit is {max_locks} (settings.max_locks); "
                "release locks you no longer need, or retry later",
                name=name,
                limit=max_locks,
            )

    def due(self, now_ms: int, limit: int) -> list[str]:
        return self._expiry.due(now_ms, limit)

    # ----------------------------------------------------------------- apply

    def acquire(self, index: int, now_ms: int, op: AcquireLock) -> dict[str, Any]:
        lk = self.held(op.name, now_ms)
        if lk is not None:
            raise Refusal(
                p.LOCK_HELD,
                f"lock {op.name!r} is held by {lk.owner!r} (token {lk.token}) until "
                f"{describe_time(lk.expires_at_ms)} cluster time; retry after it is released or expires",
                name=op.name,
                owner=lk.owner,
                expires_at=to_seconds(lk.expires_at_ms),
            )
        # As for sessions: the API checks first, this deterministic check holds under concurrency.
        self.check_room(op.name, now_ms, op.max_locks)
        stale = self.locks.get(op.name)
        if stale is not None:  # an expired lease the sweep has not removed: its end comes first
            self._event("lock_expire", op.name, {"token": stale.token})
        self._put(op.name, Lock(op.owner, index, now_ms + op.ttl_ms, op.ttl_ms))
        self._event(
            "lock_acquire", op.name, {"token": index, "owner": op.owner, "expires_at": now_ms + op.ttl_ms}
        )
        return {"token": index, "expires_at": to_seconds(now_ms + op.ttl_ms)}

    def renew(self, now_ms: int, op: RenewLock) -> dict[str, Any]:
        lk = self.held(op.name, now_ms)
        if lk is None or lk.token != op.token:
            raise self._lost(op.name, op.token, lk, f"renew lock {op.name!r}")
        lk.ttl_ms = op.ttl_ms if op.ttl_ms is not None else lk.ttl_ms
        lk.expires_at_ms = now_ms + lk.ttl_ms
        self._dirty.add(op.name)
        self._expiry.add(lk.expires_at_ms, op.name, size=len(self.locks), live=self._expiring)
        return {"expires_at": to_seconds(lk.expires_at_ms)}

    def release(self, now_ms: int, op: ReleaseLock) -> dict[str, Any]:
        lk = self.held(op.name, now_ms)
        if lk is None:
            stale = self.locks.pop(op.name, None)
            if stale is not None:  # an expired lease not swept yet
                self._dirty.add(op.name)
                self._event("lock_expire", op.name, {"token": stale.token})
            return {"released": False}
        if lk.token != op.token:
            raise self._lost(op.name, op.token, lk, f"release lock {op.name!r}")
        del self.locks[op.name]
        self._dirty.add(op.name)
        self._event("lock_release", op.name, {"token": lk.token})
        return {"released": True}

    def check_fence(self, fence: Fence, key: str, now_ms: int) -> None:
        lk = self.held(fence.lock, now_ms)
        if lk is None or lk.token != fence.token:
            err = self._lost(
                fence.lock, fence.token, lk, f"write to key {key!r} fenced by lock {fence.lock!r}"
            )
            err.fields["key"] = key
            raise err

    def expire(self, names: tuple[str, ...], now_ms: int) -> int:
        removed = 0
        for name in names:
            lk = self.locks.get(name)
            if lk is not None and not lk.held_at(now_ms):
                del self.locks[name]
                self._dirty.add(name)
                self._event("lock_expire", name, {"token": lk.token})
                removed += 1
        return removed

    # ----------------------------------------------------------------- snapshots

    def rows(self) -> list[list[Any]]:
        return [_row(n, lk) for n, lk in sorted(self.locks.items())]

    def restore(self, rows: list[list[Any]]) -> None:
        self._dirty.update(self.locks)
        self.locks = {str(n): Lock(str(o), int(t), int(e), int(ttl)) for n, o, t, e, ttl in rows}
        self._dirty.update(self.locks)
        self._expiry.rebuild(self._expiring())

    def take_dirty(self) -> list[tuple[str, list[Any] | None]]:
        """The rows changed since the last call: (name, row), row None when the lock is gone."""
        out = [(n, _row(n, self.locks[n]) if n in self.locks else None) for n in sorted(self._dirty)]
        self._dirty.clear()
        return out

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _lost(name: str, token: int, lk: Lock | None, what: str) -> Refusal:
        if lk is None:
            now = f"the lock is free (token {token} expired or was released)"
        else:
            now = f"the lock is held by {lk.owner!r} with token {lk.token}"
        return Refusal(
            p.LOCK_LOST,
            f"{what} refused: token {token} no longer holds it; {now}. Stop acting as the holder; "
            "acquire the lock again for a new token",
            name=name,
            token=token,
        )

    def _event(self, type_: str, name: str, fields: dict[str, Any]) -> None:
        if self._history is not None:
            self._history.record(type_, name, body_of(fields))

    def _put(self, name: str, lk: Lock) -> None:
        self.locks[name] = lk
        self._dirty.add(name)
        self._expiry.add(lk.expires_at_ms, name, size=len(self.locks), live=self._expiring)

    def _expiry_of(self, name: str) -> int | None:
        lk = self.locks.get(name)
        return None if lk is None else lk.expires_at_ms

    def _expiring(self) -> Iterator[tuple[int, str]]:
        for n, lk in self.locks.items():
            yield lk.expires_at_ms, n


def _row(name: str, lk: Lock) -> list[Any]:
    return [name, lk.owner, lk.token, lk.expires_at_ms, lk.ttl_ms]
