"""Keys of the replicated state: values with versions, optional expiry, counters, prefix listing.

Rules (``now_ms`` is always cluster time: the applied entry's ``time_ms`` when applying, the node's
read time when reading — never a local clock in here):

    a key is live at now_ms  <=>  it is stored and (expires_at_ms is None or now_ms < expires_at_ms)

Every operation treats an expired key exactly like an absent one, whether or not the sweep that
removes it has been applied yet. Reads never change anything (they run at different times on
different nodes); only apply removes expired keys: when they are overwritten or deleted, or when
the leader's sweep (:meth:`KeyStore.expire`) names them.

Storage: the ``kv`` table of state/tables.py, ordered by the key's UTF-8 bytes (the code point
order the API lists in); the sweep asks the ``kv_expiry`` index. Nothing per key is held in memory,
so the cost of an operation does not grow with the number of keys (O(log n) page lookups), and
values stay the msgpack bytes they were written as until a client reads them.

Invariants: ``version`` is the log index of the key's last change (so versions only grow);
``count`` is the number of stored rows (kept here: ``count(*)`` is a full scan in SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import msgpack

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
from raftstate.node.state.history import History, body_of, put_body
from raftstate.node.state.tables import StateTables

__all__ = ["KeyStore", "Record", "pack_value"]

#: rows fetched per step of a listing (expired rows are skipped, so a page may need several)
_SCAN_STEP: Final = 256


def pack_value(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


class Record:
    """A stored key as of a read: its value is decoded from ``raw`` on first use."""

    __slots__ = ("_value", "expires_at_ms", "raw", "version")

    def __init__(self, raw: bytes, version: int, expires_at_ms: int | None = None) -> None:
        self.raw = raw
        #: log index of the last change
        self.version = version
        #: cluster time (ms) from which the key is gone; None: never expires
        self.expires_at_ms = expires_at_ms
        self._value: Any = _UNDECODED

    @property
    def value(self) -> Any:
        if self._value is _UNDECODED:
            self._value = msgpack.unpackb(self.raw, raw=False)
        return self._value

    def live_at(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms

    def __repr__(self) -> str:
        return f"Record({self.value!r}, version={self.version}, expires_at_ms={self.expires_at_ms})"


_UNDECODED: Final = object()
#: the body of an event with no fields besides type, key and revision
_EMPTY_BODY: Final = body_of({})


class KeyStore:
    def __init__(self, tables: StateTables, history: History | None = None) -> None:
        """``history``: where apply records its events (docs/watch.md); None records none."""
        self._t = tables
        self._db = tables.conn
        self._history = history
        self.count = int(tables.meta("key_count") or 0)

    def __len__(self) -> int:
        return self.count

    def save_count(self) -> None:
        """Written with every commit (state/machine.py ``flush``)."""
        self._t.set_meta("key_count", self.count)

    # ----------------------------------------------------------------- reads (pure)

    def stored(self, key: str) -> Record | None:
        """The stored row, live or expired-but-unswept."""
        row = self._db.execute(
            "SELECT value, version, expires_at FROM kv WHERE key = ?", (key.encode(),)
        ).fetchone()
        return None if row is None else Record(row[0], row[1], row[2])

    def live(self, key: str, now_ms: int) -> Record | None:
        rec = self.stored(key)
        return rec if rec is not None and rec.live_at(now_ms) else None

    def scan(self, prefix: str, after: str | None, limit: int, now_ms: int) -> tuple[list[str], str | None]:
        """Live keys starting with ``prefix``, sorted, after ``after``; at most ``limit``. Returns
        (keys, next): ``next`` is the last key returned when more may follow, else None."""
        assert limit >= 1
        out: list[str] = []
        for key in self._live_keys(prefix, after, now_ms):
            if len(out) == limit:
                return out, out[-1]
            out.append(key)
        return out, None

    def names(self) -> list[str]:
        """Every stored key, sorted (tests and tools; a full scan)."""
        return [k.decode() for (k,) in self._db.execute("SELECT key FROM kv ORDER BY key")]

    def due(self, now_ms: int, limit: int) -> list[str]:
        """Stored keys that have expired by ``now_ms``, earliest first (for the leader's sweep)."""
        rows = self._db.execute(
            "SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "ORDER BY expires_at, key LIMIT ?",
            (now_ms, limit),
        )
        return [k.decode() for (k,) in rows]

    def _live_keys(self, prefix: str, after: str | None, now_ms: int) -> Iterator[str]:
        low = prefix.encode()
        high = _prefix_end(low)
        start = low if after is None or after.encode() < low else after.encode()
        strict = after is not None and start == after.encode()
        while True:
            rows = self._db.execute(
                f"SELECT key, expires_at FROM kv WHERE key {'>' if strict else '>='} ? "
                + ("AND key < ? " if high is not None else "")
                + "ORDER BY key LIMIT ?",
                (start, high, _SCAN_STEP) if high is not None else (start, _SCAN_STEP),
            ).fetchall()
            for key, expires in rows:
                if expires is None or now_ms < expires:
                    yield key.decode()
            if len(rows) < _SCAN_STEP:
                return
            start, strict = rows[-1][0], True

    # ----------------------------------------------------------------- apply

    def set(self, index: int, now_ms: int, op: SetKey) -> dict[str, Any]:
        stored = self.stored(op.key)
        rec = stored if stored is not None and stored.live_at(now_ms) else None
        if op.if_absent and rec is not None:
            return {"version": rec.version, "created": False, "expires_at": to_seconds(rec.expires_at_ms)}
        self._check_version(op.key, rec, op.if_version)
        expires = now_ms + op.ttl_ms if op.ttl_ms is not None else op.expires_at_ms
        raw = pack_value(op.value)
        self._put(op.key, raw, index, expires, new=stored is None)
        self._put_event(op.key, raw, index, expires)
        return {"version": index, "created": rec is None, "expires_at": to_seconds(expires)}

    def delete(self, now_ms: int, op: DeleteKey) -> dict[str, Any]:
        rec = self.live(op.key, now_ms)
        self._check_version(op.key, rec, op.if_version)
        removed = self._remove(op.key)  # also an expired one that the sweep has not reached yet
        if self._history is not None and removed:
            # An expired row a reader already saw as absent: its removal is its expiry's event.
            self._history.record("delete" if rec is not None else "expire", op.key, _EMPTY_BODY)
        return {"deleted": rec is not None}

    def increment(self, index: int, now_ms: int, op: Increment) -> dict[str, Any]:
        stored = self.stored(op.key)
        rec = stored if stored is not None and stored.live_at(now_ms) else None
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
        raw = pack_value(new)
        self._put(op.key, raw, index, expires, new=stored is None)
        self._put_event(op.key, raw, index, expires)
        return {"value": new, "version": index, "expires_at": to_seconds(expires)}

    def expire(self, keys: tuple[str, ...], now_ms: int) -> int:
        """The sweep: remove each named key that has expired at ``now_ms``. Returns how many."""
        removed = 0
        for key in keys:
            cur = self._db.execute(
                "DELETE FROM kv WHERE key = ? AND expires_at IS NOT NULL AND expires_at <= ?",
                (key.encode(), now_ms),
            )
            removed += cur.rowcount
            if cur.rowcount and self._history is not None:
                self._history.record("expire", key, _EMPTY_BODY)
        self.count -= removed
        return removed

    # ----------------------------------------------------------------- snapshots

    def raw_rows(self) -> Iterator[tuple[str, bytes, int, int | None]]:
        """Canonical: sorted by key; values as their stored msgpack bytes."""
        for k, v, ver, exp in self._db.execute("SELECT key, value, version, expires_at FROM kv ORDER BY key"):
            yield k.decode(), v, ver, exp

    def rows(self) -> list[list[Any]]:
        """Canonical: sorted by key, values decoded."""
        return [[k, msgpack.unpackb(v, raw=False), ver, exp] for k, v, ver, exp in self.raw_rows()]

    def restore(self, rows: list[list[Any]]) -> None:
        """Replace every key (inside the caller's transaction)."""
        self._db.execute("DELETE FROM kv")
        self._db.executemany(
            "INSERT INTO kv(key, value, version, expires_at) VALUES (?, ?, ?, ?)",
            (
                (str(k).encode(), pack_value(v), int(ver), None if exp is None else int(exp))
                for k, v, ver, exp in rows
            ),
        )
        self.count = len(rows)

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

    def _put(self, key: str, raw: bytes, version: int, expires: int | None, *, new: bool) -> None:
        self._t.begin()
        self._db.execute(
            "INSERT OR REPLACE INTO kv(key, value, version, expires_at) VALUES (?, ?, ?, ?)",
            (key.encode(), raw, version, expires),
        )
        if new:
            self.count += 1

    def _remove(self, key: str) -> int:
        self._t.begin()
        removed: int = self._db.execute("DELETE FROM kv WHERE key = ?", (key.encode(),)).rowcount
        self.count -= removed
        return removed

    def _put_event(self, key: str, raw: bytes, version: int, expires: int | None) -> None:
        if self._history is not None:
            self._history.record("put", key, put_body(raw, version, expires))


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


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
