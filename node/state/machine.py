"""The replicated state machine: applied identically, in log order, on every node.

``apply(index, time_ms, data)`` is deterministic: it reads nothing but the command bytes, the
entry's index and its leader-assigned ``time_ms`` — never a local clock, never this node's
configuration — so every replica that applies the same log reaches byte-identical state and
byte-identical snapshots. A malformed or refused command is an *outcome* (a Refusal returned,
never raised), the same on every replica, and changes nothing.

The state is split by concept, each module holding its own rules:

    commands.py      the command schema, encoding and validation (shared with the API)
    tables.py        the SQLite tables the state lives in (a file on a node, memory in tests)
    keys.py          keys: versions, expiry, counters, listing
    locks.py         leases with fencing tokens
    sessions.py      exactly-once writes (remembered outcomes)
    expiry.py        the derived index the leader's sweep asks "what has expired by T?"
    history.py       the events of every change, by revision (watch; not part of snapshots)

Apply order for a command: decode → session admission (maybe the remembered outcome) → fence →
the operation → remember the outcome in the session.

Durability: apply writes into one open transaction; :meth:`KVStateMachine.flush` commits it with
``applied_index`` and ``time_ms`` (the driver flushes after every batch of applied entries), so the
committed state is always the state after exactly ``applied_index`` — a restart opens the store
and replays only the log after it (node/storage/state_file.py makes it durable).

Cluster time: ``time_ms`` is the largest entry time applied so far (entry times never decrease
along the log, and this max keeps it so across snapshot installs). Reads pass their own ``now_ms``
(see node/runtime/cluster_time.py for how a node picks it).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgpack

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    AcquireLock,
    Command,
    DeleteKey,
    Expire,
    Increment,
    KeepAlive,
    OpenSession,
    Operation,
    ReleaseLock,
    RenewLock,
    SetKey,
    decode,
)
from raftstate.node.state.history import History
from raftstate.node.state.keys import KeyStore, Record
from raftstate.node.state.locks import Lock, LockTable
from raftstate.node.state.sessions import Outcome, SessionTable
from raftstate.node.state.tables import StateTables

__all__ = ["KVStateMachine", "Record", "encode_command"]

log = logging.getLogger("raftstate.node")

#: snapshot format written by :meth:`KVStateMachine.snapshot` (1: the node issue's keys-only format)
SNAPSHOT_FORMAT: Final = 2


def encode_command(op: str, **args: Any) -> bytes:
    """Raw command bytes (tests and tools; the API builds typed commands with commands.encode)."""
    out: bytes = msgpack.packb({"op": op, **args}, use_bin_type=True)
    return out


class KVStateMachine:
    """Keys, locks and sessions; the job-state machine of the node."""

    def __init__(self, tables: StateTables | None = None) -> None:
        """The state stored in ``tables`` (default: a new in-memory database)."""
        self.reopen(tables if tables is not None else StateTables.in_memory())

    def reopen(self, tables: StateTables) -> None:
        """Take up the state stored in ``tables`` (at start, and after a new store was installed)."""
        self.tables = tables
        #: the events apply records, in the same transactions (docs/watch.md)
        self.history = History(self.tables)
        self.keys = KeyStore(self.tables, self.history)
        self.locks = LockTable(self.history)
        self.sessions = SessionTable()
        self.locks.restore([msgpack.unpackb(r, raw=False) for _, r in self.tables.read_rows("locks", "name")])
        self.sessions.restore(
            [msgpack.unpackb(r, raw=False) for _, r in self.tables.read_rows("sessions", "id")]
        )
        self.locks.take_dirty()
        self.sessions.take_dirty()
        #: index of the last entry applied (any kind); committed with the data (:meth:`flush`)
        self.applied_index = int(self.tables.meta("applied_index") or 0)
        #: cluster time of the last applied entry (ms); never decreases
        self.time_ms = int(self.tables.meta("time_ms") or 0)

    def flush(self) -> None:
        """Commit everything applied since the last flush, with the applied index it reached."""
        t = self.tables
        if not t.conn.in_transaction:
            return
        t.set_meta("applied_index", self.applied_index)
        t.set_meta("time_ms", self.time_ms)
        self.keys.save_count()
        self.history.save()
        t.write_rows("locks", "name", ((n, _packed(r)) for n, r in self.locks.take_dirty()))
        t.write_rows("sessions", "id", ((i, _packed(r)) for i, r in self.sessions.take_dirty()))
        t.commit()

    # ----------------------------------------------------------------- apply

    def apply(self, index: int, time_ms: int, data: bytes) -> Outcome:
        """Apply one command. Returns its result body, or a Refusal (never raises for a bad
        or refused command: a refusal is an outcome every replica must agree on)."""
        self.advance_to(index, time_ms)
        now = self.time_ms
        try:
            cmd = decode(data)
        except Refusal as exc:
            return Refusal(exc.code, f"entry {index}: {exc.message}", **exc.fields)
        if cmd.session is not None:
            try:
                remembered = self.sessions.begin(cmd.session, now)
            except Refusal as exc:
                return exc
            if remembered is not None:
                return remembered
        outcome = self._execute(index, now, cmd)
        if cmd.session is not None:
            self.sessions.record(cmd.session, outcome)
        return outcome

    def advance_to(self, index: int, time_ms: int) -> None:
        """Every entry moves index and time, also one that carries no command (no-op, membership)."""
        assert index > self.applied_index, f"apply out of order: {index} after {self.applied_index}"
        self.tables.begin()
        self.applied_index = index
        self.time_ms = max(self.time_ms, time_ms)
        self.history.at(index, self.time_ms)

    def _execute(self, index: int, now: int, cmd: Command) -> Outcome:
        try:
            if cmd.fence is not None:
                key = getattr(cmd.op, "key", "")
                self.locks.check_fence(cmd.fence, key, now)
            return self._dispatch(index, now, cmd.op)
        except Refusal as exc:
            return exc
        except sqlite3.Error:
            # The store failed (disk full, I/O error, corruption): not an outcome of the command,
            # and this replica alone sees it. Stop (the driver's fatal path); a restart replays.
            raise
        except Exception as exc:
            # A bug, not bad input (commands were validated): deterministic all the same — every
            # replica runs the same code on the same command — so answer it instead of stopping.
            log.critical("entry %d: applying %r failed", index, cmd, exc_info=True)
            return Refusal(p.INTERNAL, f"entry {index}: internal error applying the command: {exc!r}")

    def _dispatch(self, index: int, now: int, op: Operation) -> dict[str, Any]:
        match op:
            case SetKey():
                return self.keys.set(index, now, op)
            case DeleteKey():
                return self.keys.delete(now, op)
            case Increment():
                return self.keys.increment(index, now, op)
            case AcquireLock():
                return self.locks.acquire(index, now, op)
            case RenewLock():
                return self.locks.renew(now, op)
            case ReleaseLock():
                return self.locks.release(now, op)
            case OpenSession():
                return self.sessions.open(index, now, op)
            case KeepAlive():
                return self.sessions.keepalive(now, op)
            case Expire():
                return {
                    "keys": self.keys.expire(op.keys, now),
                    "locks": self.locks.expire(op.locks, now),
                    "sessions": self.sessions.expire(op.sessions, now),
                }
        raise AssertionError(f"no handler for {op!r}")

    # ----------------------------------------------------------------- reads (pure: never change state)

    def get(self, key: str, now_ms: int | None = None) -> Record | None:
        """The live record of ``key`` at ``now_ms`` (default: the last applied entry's time)."""
        return self.keys.live(key, self.time_ms if now_ms is None else now_ms)

    def list_keys(
        self, prefix: str, after: str | None, limit: int, now_ms: int
    ) -> tuple[list[str], str | None]:
        return self.keys.scan(prefix, after, limit, now_ms)

    def lock(self, name: str, now_ms: int) -> Lock | None:
        return self.locks.held(name, now_ms)

    def due(self, now_ms: int, limit: int) -> Expire | None:
        """What the leader's sweep should remove at ``now_ms`` (at most ``limit`` names), or None."""
        keys = self.keys.due(now_ms, limit)
        locks = self.locks.due(now_ms, limit - len(keys))
        sessions = self.sessions.due(now_ms, limit - len(keys) - len(locks))
        if not (keys or locks or sessions):
            return None
        return Expire(tuple(keys), tuple(locks), tuple(sessions))

    def stats(self) -> dict[str, int]:
        return {
            "keys": len(self.keys),
            "locks": len(self.locks),
            "sessions": len(self.sessions),
            "applied_index": self.applied_index,
            "time_ms": self.time_ms,
        }

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Canonical bytes (every collection sorted) so two replicas at one index produce equal
        snapshots: keys with versions and expiries, locks with tokens, sessions with their
        remembered outcomes, cluster time. (The token counter is the log index: applied_index.)"""
        return self.snapshot_later()()

    def snapshot_later(self) -> Callable[[], bytes]:
        """``snapshot()`` of the state as it is NOW: the canonical bytes, built at once (the rows
        come from the store in key order, values packed as the bytes they are stored as). A node
        with a state file never calls this on the loop: its snapshots are the store itself
        (node/storage/state_file.py); this serves in-memory state, digests, backups and tests."""
        data = self._encode()
        return lambda: data

    def _encode(self) -> bytes:
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of :meth:`snapshot` in pieces of about ``chunk_bytes`` (a digest of millions of
        keys never holds them all). The same bytes as packb({**head, "keys": rows, ...}), packed
        row by row: a stored value is already the msgpack of the value, so it is copied as is."""
        head = (("format", SNAPSHOT_FORMAT), ("applied_index", self.applied_index), ("time_ms", self.time_ms))
        packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        buf = bytearray(packer.pack_map_header(len(head) + 3))
        for name, value in head:
            buf += packer.pack(name)
            buf += packer.pack(value)
        buf += packer.pack("keys")
        buf += packer.pack_array_header(len(self.keys))
        for key, raw, version, expires in self.keys.raw_rows():
            buf += packer.pack_array_header(4)
            buf += packer.pack(key)
            buf += raw
            buf += packer.pack(version)
            buf += packer.pack(expires)
            if len(buf) >= chunk_bytes:
                yield bytes(buf)
                buf.clear()
        for name, rows in (("locks", self.locks.rows()), ("sessions", self.sessions.rows())):
            buf += packer.pack(name)
            buf += packer.pack(rows)
        yield bytes(buf)

    def restore(self, blob: bytes) -> None:
        body = msgpack.unpackb(blob, raw=False)
        if not isinstance(body, dict) or "applied_index" not in body:
            raise ValueError("not a state machine snapshot")
        fmt = body.get("format", 1)
        if fmt not in (1, SNAPSHOT_FORMAT):
            raise ValueError(f"snapshot format {fmt} is newer than this node understands ({SNAPSHOT_FORMAT})")
        self.tables.clear()
        self.applied_index = int(body["applied_index"])
        self.time_ms = int(body["time_ms"])
        if fmt == 1:  # keys without expiry, no locks or sessions
            self.keys.restore([[k, v, ver, None] for k, v, ver in body["data"]])
            self.locks.restore([])
            self.sessions.restore([])
        else:
            self.keys.restore(body["keys"])
            self.locks.restore(body["locks"])
            self.sessions.restore(body["sessions"])
        self.history.reset(self.applied_index)  # the events before the snapshot are not in it
        self.flush()


def _packed(row: list[Any] | None) -> bytes | None:
    return None if row is None else msgpack.packb(row, use_bin_type=True)
