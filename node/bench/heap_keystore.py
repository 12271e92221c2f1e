"""The in-heap KeyStore as it was before issue 14 (node/state/keys.py at 5f2112c), kept only as the
engine bake-off's reference row: a dict of records plus one sorted Python list of keys, with
``bisect.insort`` per new key (O(n)) and a heap of expiries. The node no longer uses it.

Its original docstring follows.

Keys of the replicated state: values with versions, optional expiry, counters, prefix listing.

Rules (``now_ms`` is always cluster time: the applied entry's ``time_ms`` when applying, the node's
read time when reading — never a local clock in here):

    a key is live at now_ms  <=>  it is stored and (expires_at_ms is None or now_ms < expires_at_ms)

Every operation treats an expired key exactly like an absent one, whether or not the sweep that
removes it has been applied yet. Reads never change anything (they run at different times on
different nodes); only apply removes expired keys: when they are overwritten or deleted, or when
the leader's sweep (:meth:`KeyStore.expire`) names them.

Invariants: ``version`` is the log index of the key's last change (so versions only grow);
``_sorted`` holds exactly the stored keys, in order.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    INT64_MAX,
    INT64_MIN,
    DeleteKey,
    Increment,
    SetKey,
    to_seconds,
)
from raftstate.node.state.expiry import ExpiryIndex

__all__ = ["KeyStore", "Record"]


@dataclass(slots=True)
class Record:
    value: Any
    #: log index of the last change
    version: int
    #: cluster time (ms) from which the key is gone; None: never expires
    expires_at_ms: int | None = None

    def live_at(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


class KeyStore:
    def __init__(self) -> None:
        self.data: dict[str, Record] = {}
        self._sorted: list[str] = []
        self._expiry: ExpiryIndex[str] = ExpiryIndex(self._expiry_of)

    def __len__(self) -> int:
        return len(self.data)

    # ----------------------------------------------------------------- reads (pure)

    def live(self, key: str, now_ms: int) -> Record | None:
        rec = self.data.get(key)
        return rec if rec is not None and rec.live_at(now_ms) else None

    def scan(self, prefix: str, after: str | None, limit: int, now_ms: int) -> tuple[list[str], str | None]:
        """Live keys starting with ``prefix``, sorted, after ``after``; at most ``limit``. Returns
        (keys, next): ``next`` is the last key returned when more may follow, else None."""
        assert limit >= 1
        start = bisect.bisect_left(self._sorted, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self._sorted, after))
        out: list[str] = []
        for key in self._iter_from(start, prefix):
            if not self.data[key].live_at(now_ms):
                continue
            if len(out) == limit:
                return out, out[-1]
            out.append(key)
        return out, None

    def due(self, now_ms: int, limit: int) -> list[str]:
        """Stored keys that have expired by ``now_ms`` (for the leader's sweep)."""
        return self._expiry.due(now_ms, limit)

    def _iter_from(self, start: int, prefix: str) -> Iterator[str]:
        for i in range(start, len(self._sorted)):
            key = self._sorted[i]
            if not key.startswith(prefix):
                return
            yield key

    # ----------------------------------------------------------------- apply

    def set(self, index: int, now_ms: int, op: SetKey) -> dict[str, Any]:
        rec = self.live(op.key, now_ms)
        if op.if_absent and rec is not None:
            return {"version": rec.version, "created": False, "expires_at": to_seconds(rec.expires_at_ms)}
        self._check_version(op.key, rec, op.if_version)
        expires = now_ms + op.ttl_ms if op.ttl_ms is not None else op.expires_at_ms
        self._put(op.key, Record(op.value, index, expires))
        return {"version": index, "created": rec is None, "expires_at": to_seconds(expires)}

    def delete(self, now_ms: int, op: DeleteKey) -> dict[str, Any]:
        rec = self.live(op.key, now_ms)
        self._check_version(op.key, rec, op.if_version)
        self._remove(op.key)  # also an expired one that the sweep has not reached yet
        return {"deleted": rec is not None}

    def increment(self, index: int, now_ms: int, op: Increment) -> dict[str, Any]:
        rec = self.live(op.key, now_ms)
        current = 0 if rec is None else rec.value
        if isinstance(current, bool) or not isinstance(current, int):
            raise Refusal(
                p.WRONG_TYPE,
                f"key {op.key!r} holds {_kind(current)}, not an integer; increment works only on integer "
                "values (set the key to a number first, or count under another key)",
                key=op.key,
            )
        new = current + op.by
        if not INT64_MIN <= new <= INT64_MAX:
            raise Refusal(
                p.OVERFLOW,
                f"incrementing key {op.key!r} (now {current}) by {op.by} leaves the signed 64-bit range "
                f"[{INT64_MIN}, {INT64_MAX}]; the key is unchanged",
                key=op.key,
                value=current,
            )
        if op.ttl_ms is not None:
            expires: int | None = now_ms + op.ttl_ms
        elif op.expires_at_ms is not None:
            expires = op.expires_at_ms
        else:
            expires = rec.expires_at_ms if rec is not None else None
        self._put(op.key, Record(new, index, expires))
        return {"value": new, "version": index, "expires_at": to_seconds(expires)}

    def expire(self, keys: tuple[str, ...], now_ms: int) -> int:
        """The sweep: remove each named key that has expired at ``now_ms``. Returns how many."""
        removed = 0
        for key in keys:
            rec = self.data.get(key)
            if rec is not None and not rec.live_at(now_ms):
                self._remove(key)
                removed += 1
        return removed

    # ----------------------------------------------------------------- snapshots

    def rows(self) -> list[list[Any]]:
        """Canonical: sorted by key."""
        return list(self.rows_later()[1]())

    def rows_later(self) -> tuple[int, Callable[[], Iterator[list[Any]]]]:
        """How many rows, and the rows as they are now, produced later one by one (in a thread
        while applies go on, never all in memory at once): only shallow copies are taken here —
        safe because a Record is replaced on every change, never mutated."""
        data, order = dict(self.data), list(self._sorted)

        def rows() -> Iterator[list[Any]]:
            for k in order:
                r = data[k]
                yield [k, r.value, r.version, r.expires_at_ms]

        return len(order), rows

    def restore(self, rows: list[list[Any]]) -> None:
        self.data = {
            str(k): Record(v, int(ver), None if exp is None else int(exp)) for k, v, ver, exp in rows
        }
        self._sorted = sorted(self.data)
        self._expiry.rebuild(self._expiring())

    # ----------------------------------------------------------------- helpers

    def _check_version(self, key: str, rec: Record | None, if_version: int | None) -> None:
        if if_version is None or (rec is not None and rec.version == if_version):
            return
        if rec is None:
            msg = f"key {key!r} does not exist, so it is not at version {if_version}"
        else:
            msg = f"key {key!r} is at version {rec.version}, not {if_version}"
        raise Refusal(
            p.VERSION_MISMATCH,
            msg + "; read it again and retry with the current version",
            key=key,
            version=None if rec is None else rec.version,
        )

    def _put(self, key: str, rec: Record) -> None:
        if key not in self.data:
            bisect.insort(self._sorted, key)
        self.data[key] = rec
        if rec.expires_at_ms is not None:
            self._expiry.add(rec.expires_at_ms, key, size=len(self.data), live=self._expiring)

    def _remove(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            i = bisect.bisect_left(self._sorted, key)
            assert self._sorted[i] == key, key
            del self._sorted[i]

    def _expiry_of(self, key: str) -> int | None:
        rec = self.data.get(key)
        return None if rec is None else rec.expires_at_ms

    def _expiring(self) -> Iterator[tuple[int, str]]:
        for k, r in self.data.items():
            if r.expires_at_ms is not None:
                yield r.expires_at_ms, k


def _kind(value: Any) -> str:
    names = {
        str: "a string",
        bytes: "bytes",
        float: "a float",
        bool: "a boolean",
        list: "a list",
        dict: "a map",
    }
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")
