"""The replicated state's tables in one SQLite database: schema, meta values, batched commits.

The state machine keeps its data in an embedded, ordered, on-disk store (docs/storage-engine.md
says why SQLite): a node opens its file (node/storage/state_file.py), tests and tools use an
in-memory database with the same schema. Everything the state is made of lives here:

    meta(name, value)                     applied_index, time_ms, key count, schema version
    kv(key, value, version, expires_at)   keys: UTF-8 bytes, ordered as the API lists them;
                                          values stay as the msgpack bytes they were written as
    kv_expiry                             index (expires_at, key) of expiring keys: the sweep's
                                          "what has expired by T?" and nothing in memory
    locks(name, row), sessions(id, row)   small tables, also held in memory (state/locks.py,
                                          state/sessions.py); only the rows changed are written

Writes go into one open transaction that :meth:`StateTables.commit` ends — the driver commits
after each batch of applied entries — so the applied index is always committed *with* the data
it covers: whatever committed state a crash leaves is the state after exactly ``applied_index``.
Only apply writes (one thread: the event loop's); reads see what apply has written, committed or
not, as they saw the heap before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

__all__ = ["SCHEMA_VERSION", "StateTables"]

#: the layout of the tables below; a newer file refuses to open with an older node
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kv(key BLOB PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL, "
    "expires_at INTEGER) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at, key) WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS locks(name TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sessions(id INTEGER PRIMARY KEY, row BLOB NOT NULL)",
)


class StateTables:
    """The connection the state machine applies through (one thread), and its meta values."""

    def __init__(self, conn: sqlite3.Connection, on_close: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self._on_close = on_close if on_close is not None else conn.close
        conn.isolation_level = None  # transactions are begun and ended here, explicitly
        for stmt in _SCHEMA:
            conn.execute(stmt)
        version = self.meta("schema_version")
        if version is None:
            self.begin()
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.commit()
        elif int(version) > SCHEMA_VERSION:
            raise ValueError(
                f"the state store has schema version {version}, newer than this node understands "
                f"({SCHEMA_VERSION}): run the newer raftstate, or replace this node"
            )

    @classmethod
    def in_memory(cls) -> StateTables:
        return cls(sqlite3.connect(":memory:", check_same_thread=False))

    def close(self) -> None:
        self._on_close()

    def begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade to fail later

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def meta(self, name: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, name: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))

    def write_rows(self, table: str, column: str, rows: Iterable[tuple[Any, bytes | None]]) -> None:
        """Upsert (name, row) pairs into ``locks``/``sessions``; a None row deletes the name."""
        assert (table, column) in (("locks", "name"), ("sessions", "id")), table
        for name, row in rows:
            if row is None:
                self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))
            else:
                self.conn.execute(f"INSERT OR REPLACE INTO {table}({column}, row) VALUES (?, ?)", (name, row))

    def read_rows(self, table: str, column: str) -> Iterator[tuple[Any, bytes]]:
        assert (table, column) in (("locks", "name"), ("sessions", "id")), table
        yield from self.conn.execute(f"SELECT {column}, row FROM {table} ORDER BY {column}")

    def clear(self) -> None:
        """Empty every table (a restore replaces the whole state)."""
        self.begin()
        for table in ("kv", "locks", "sessions", "meta"):
            self.conn.execute(f"DELETE FROM {table}")
        self.set_meta("schema_version", SCHEMA_VERSION)
