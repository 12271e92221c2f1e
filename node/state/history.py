"""History: the events of every change, by revision, in the state store (docs/watch.md).

Apply writes one row per event into the ``history`` table, in the same transaction as the change
itself, so every replica holds the same events for the same revisions and a restart keeps them:

    history(revision, seq, key, type, body, time_ms)   PRIMARY KEY (revision, seq)

``revision`` is the log index of the entry that made the change, ``seq`` the order of the events of
one entry (a sweep removes many names in one entry), ``key`` the key or lock name (UTF-8),
``type`` one of :data:`EVENT_TYPES`, ``body`` the msgpack map of the event's other fields (a put's
``value`` stays the msgpack bytes it was written as), ``time_ms`` the entry's cluster time (what
retention by age compares).

Invariants (meta values, committed with the rows they describe):

    history_oldest   every event with revision >= oldest is in the table (older ones were pruned, or
                     the node took up its state from a snapshot and never saw them); 1 <= oldest <=
                     applied_index + 1
    history_events   rows in the table;  history_bytes: sum of len(key) + len(body) over them

History is NOT part of the replicated state's canonical bytes (snapshots, digests, backups: keys,
locks and sessions only): each node prunes its own history by its own settings, off the hot path,
and a node that took up a whole-state snapshot keeps history only from after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from raftstate.node.state.tables import StateTables

__all__ = ["EVENT_TYPES", "Event", "History", "Page", "body_of", "prefix_end", "put_body"]

#: every event type and what makes it (docs/watch.md has the table)
EVENT_TYPES: Final = ("put", "delete", "expire", "lock_acquire", "lock_release", "lock_expire")

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS history(revision INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "key BLOB NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL, time_ms INTEGER NOT NULL, "
    "PRIMARY KEY (revision, seq)) WITHOUT ROWID"
)

_PACKER: Final = msgpack.Packer(use_bin_type=True, autoreset=True)


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as stored: ``body`` is the msgpack map of the fields besides type/key/revision."""

    revision: int
    seq: int
    key: str
    type: str
    body: bytes
    time_ms: int

    def wire(self) -> dict[str, Any]:
        """The event as the API answers it: ``{"type", "key", "revision", ...fields}``."""
        fields: dict[str, Any] = msgpack.unpackb(self.body, raw=False)
        return {"type": self.type, "key": self.key, "revision": self.revision, **fields}

    @property
    def size(self) -> int:
        """What the event counts against ``watch_history_bytes``."""
        return len(self.key.encode()) + len(self.body)


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of :meth:`History.read`: ``events`` under the prefix with ``from`` <= revision
    <= ``revision``, all of them, whole revisions only."""

    events: list[Event]
    revision: int


def body_of(fields: dict[str, Any], raw_value: bytes | None = None) -> bytes:
    """The msgpack map of ``fields``, plus ``value`` as its already-packed bytes when given."""
    out = bytearray(_PACKER.pack_map_header(len(fields) + (raw_value is not None)))
    if raw_value is not None:
        out += _PACKER.pack("value")
        out += raw_value
    for name, v in fields.items():
        out += _PACKER.pack(name)
        out += _PACKER.pack(v)
    return bytes(out)


#: the fixed parts of a put's body: {"value": <raw>, "version": v, "expires_at": e} as msgpack
_PUT_HEAD: Final = _PACKER.pack_map_header(3) + _PACKER.pack("value")
_PUT_VERSION: Final = _PACKER.pack("version")
_PUT_EXPIRES: Final = _PACKER.pack("expires_at")


def put_body(raw_value: bytes, version: int, expires_at: int | None) -> bytes:
    """``body_of({"version": version, "expires_at": expires_at}, raw_value)``, made faster: every
    write makes one (the same bytes; a test holds them equal)."""
    return b"".join(
        (_PUT_HEAD, raw_value, _PUT_VERSION, _PACKER.pack(version), _PUT_EXPIRES, _PACKER.pack(expires_at))
    )


class History:
    """The ``history`` table of one store: written by apply (one thread), read by the watch API."""

    def __init__(self, tables: StateTables) -> None:
        self._t = tables
        self._db = tables.conn
        #: rows recorded but not yet inserted (:meth:`save`; every read inserts them first)
        self._pending: list[tuple[int, int, bytes, str, bytes, int]] = []
        self._db.execute(_SCHEMA)  # a store from before watch gets the table when it is opened
        applied = int(tables.meta("applied_index") or 0)
        oldest = tables.meta("history_oldest")
        if oldest is None:
            # A new store (applied 0: oldest 1, everything), or one from before history: it never
            # recorded what it applied, so its history starts after it.
            self.oldest = applied + 1
            self.events = 0
            self.bytes = 0
            self._t.begin()
            self.save()
            self._t.commit()
        else:
            self.oldest = int(oldest)
            self.events = int(tables.meta("history_events") or 0)
            self.bytes = int(tables.meta("history_bytes") or 0)
        #: events applied since the last :meth:`take_new` (the watch hub's feed), in order; kept
        #: only once someone takes them (a state machine without a watch hub holds none)
        self._new: list[Event] = []
        self.feeding = False

        #: the entry being applied (:meth:`at`): its index is the revision of what it changes
        self._revision = applied
        self._time_ms = 0
        self._seq = -1
        #: counts :meth:`reset`s: a reader holding events of this history knows they were replaced
        self.generation = 0
        #: False: apply records nothing (the bench's "without history" run; never on a node)
        self.enabled = True

    # ----------------------------------------------------------------- apply (inside its transaction)

    def at(self, index: int, time_ms: int) -> None:
        """The entry at ``index`` (cluster time ``time_ms``) is being applied: what it changes is
        recorded with revision ``index``."""
        assert index > self._revision, f"history: entry {index} after {self._revision}"
        self._revision, self._time_ms, self._seq = index, time_ms, -1

    def record(self, type_: str, key: str, body: bytes) -> None:
        """One event of the entry being applied (events of one entry come in apply order). The row
        is inserted with the batch's other rows at :meth:`save` (one ``executemany``: a third of
        the cost of a statement per event), in the same transaction as the change."""
        if not self.enabled:
            return
        assert type_ in EVENT_TYPES, type_
        assert self._revision >= self.oldest, f"history: revision {self._revision} below oldest {self.oldest}"
        self._seq += 1
        kb = key.encode()
        self._pending.append((self._revision, self._seq, kb, type_, body, self._time_ms))
        self.events += 1
        self.bytes += len(kb) + len(body)
        if self.feeding:
            self._new.append(Event(self._revision, self._seq, key, type_, body, self._time_ms))

    def save(self) -> None:
        """Written with every commit (state/machine.py ``flush``): the rows recorded since the last
        save, and the meta values."""
        self._write_pending()
        self._t.set_meta("history_oldest", self.oldest)
        self._t.set_meta("history_events", self.events)
        self._t.set_meta("history_bytes", self.bytes)

    def _write_pending(self) -> None:
        if self._pending:
            self._t.begin()
            self._db.executemany(
                "INSERT INTO history(revision, seq, key, type, body, time_ms) VALUES (?, ?, ?, ?, ?, ?)",
                self._pending,
            )
            self._pending.clear()

    def take_new(self) -> list[Event]:
        """The events recorded since the last call (the watch hub's feed after each apply batch)."""
        self.feeding = True
        out, self._new = self._new, []
        return out

    def reset(self, applied_index: int) -> None:
        """Forget every event: the state was replaced by a whole-state snapshot at ``applied_index``
        (inside the caller's transaction); history starts after it."""
        self._t.begin()
        self._pending.clear()
        self._db.execute("DELETE FROM history")
        self.oldest = applied_index + 1
        self._revision = applied_index
        self.events = self.bytes = 0
        self._new.clear()
        self.generation += 1
        self.save()

    # ----------------------------------------------------------------- reads (pure)

    def read(self, prefix: str, from_rev: int, upto: int, limit: int, max_examined: int) -> Page:
        """Events under ``prefix`` with revision >= ``from_rev`` (>= :attr:`oldest`, checked by the
        caller), at most ``limit`` unless one revision holds more (never split). ``upto`` is the
        applied index: every event up to it is in the table. At most about ``max_examined`` rows are
        examined (plus the rest of the revision the scan stops in), so a rare prefix over a long
        history costs a bounded read: the page may then be empty, complete up to the last revision
        examined."""
        assert limit >= 1 and max_examined >= 1
        self._write_pending()
        if from_rev > upto:
            return Page([], upto)
        low = prefix.encode()
        high = prefix_end(low)
        # The revision the bounded scan ends in (None: it reaches the end of the table).
        last = self._db.execute(
            "SELECT revision FROM history WHERE revision >= ? ORDER BY revision, seq LIMIT 1 OFFSET ?",
            (from_rev, max_examined - 1),
        ).fetchone()
        end = upto if last is None else min(int(last[0]), upto)
        rows = self._db.execute(
            "SELECT revision, seq, key, type, body, time_ms FROM history "
            "WHERE revision >= ? AND revision <= ? "
            + ("AND key >= ? AND key < ? " if high is not None else "AND key >= ? ")
            + "ORDER BY revision, seq",
            (from_rev, end, low, high) if high is not None else (from_rev, end, low),
        )
        events: list[Event] = []
        for rev, seq, key, type_, body, time_ms in rows:
            if len(events) >= limit and rev != events[-1].revision:
                return Page(events, events[-1].revision)
            events.append(Event(rev, seq, key.decode(), type_, body, time_ms))
        return Page(events, end)

    def scan_all(self) -> Iterator[Event]:
        """Every stored event in order (tests and tools)."""
        self._write_pending()
        for rev, seq, key, type_, body, time_ms in self._db.execute(
            "SELECT revision, seq, key, type, body, time_ms FROM history ORDER BY revision, seq"
        ):
            yield Event(rev, seq, key.decode(), type_, body, time_ms)

    # ----------------------------------------------------------------- retention (node-local)

    def over(self, max_events: int, max_bytes: int, min_time_ms: int) -> bool:
        """Whether the history holds more than the retention allows (oldest rows too old, too many
        rows, or too many bytes)."""
        self._write_pending()
        if self.events > max_events or self.bytes > max_bytes:
            return True
        row = self._db.execute("SELECT time_ms FROM history ORDER BY revision, seq LIMIT 1").fetchone()
        return row is not None and int(row[0]) < min_time_ms

    def prune_step(self, max_events: int, max_bytes: int, min_time_ms: int, batch_rows: int) -> int:
        """Remove the oldest whole revisions while the history is over its retention, at most
        about ``batch_rows`` rows (one revision more if the first is bigger). Returns rows removed;
        the caller commits (a short transaction of its own, off the apply path)."""
        if not self.over(max_events, max_bytes, min_time_ms):
            return 0
        # Where a batch of rows ends; revisions below it go whole.
        first = self._db.execute("SELECT revision FROM history ORDER BY revision, seq LIMIT 1").fetchone()
        if first is None:  # counts that disagree with an empty table (never expected): trust the table
            self._t.begin()
            self.events = self.bytes = 0
            self.save()
            return 0
        cut_row = self._db.execute(
            "SELECT revision FROM history ORDER BY revision, seq LIMIT 1 OFFSET ?", (batch_rows,)
        ).fetchone()
        cut = int(cut_row[0]) if cut_row is not None else None
        if cut is None or cut == int(first[0]):
            # Fewer rows than a batch left, or the first revision alone fills one: take one revision.
            nxt = self._db.execute(
                "SELECT revision FROM history WHERE revision > ? ORDER BY revision LIMIT 1", (int(first[0]),)
            ).fetchone()
            cut = int(nxt[0]) if nxt is not None else int(first[0]) + 1
        if self.events <= max_events and self.bytes <= max_bytes:
            # Over by age only: up to the first revision still young enough (times never decrease
            # along the log, and the first revision is old, so this still removes something).
            young = self._db.execute(
                "SELECT revision FROM history WHERE revision < ? AND time_ms >= ? ORDER BY revision LIMIT 1",
                (cut, min_time_ms),
            ).fetchone()
            if young is not None:
                cut = int(young[0])
        n, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(key) + length(body)), 0) FROM history WHERE revision < ?",
            (cut,),
        ).fetchone()
        self._t.begin()
        self._db.execute("DELETE FROM history WHERE revision < ?", (cut,))
        self.events -= int(n)
        self.bytes -= int(size)
        self.oldest = max(self.oldest, cut)
        self.save()
        return int(n)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
