#!/usr/bin/env python3
"""Issue 14: the state machine's storage-engine bake-off, every candidate side by side in one run.

    .venv/bin/pip install -e '.[bakeoff]'          # lmdb, sortedcontainers (never runtime dependencies)
    .venv/bin/python scripts/engine_bakeoff.py --keys 2000000 --step 250000 \\
        --out docs/perf/engine-bakeoff.md --png docs/perf/engine-bakeoff.png

Each engine runs in its own fresh subprocess, one after the other (so RSS is that engine's alone and
two engines never compete for the CPUs), on the same workload:

* keys ``webhooks:<stripe|github|shopify>:evt_<16 hex>``, pseudo-random but the same for every engine
  (key i is a keyed BLAKE2b of i, so nothing keeps a list of the keys in the measured process);
* a msgpack value of ~85 bytes ``{"status": "done", "at": ..., "attempts": 1, "handler": ..., "job": ...}``,
  version = the write's number (a log index), expires_at = its cluster time + 7 days (ms); the
  cluster time advances 1 ms per write, so expiry order is write order;
* writes in batches of ``--batch`` (200) per transaction, like the driver's apply batches; each write
  is what apply does: read the key's current record (to answer ``created``/check ``if_version``),
  then write the new one and its expiry index entry.

Engines (``--engines``, default all; one whose package is missing is skipped, with how to install it):

``sqlite``       stdlib sqlite3, one file: ``journal_mode=WAL``, ``synchronous=NORMAL`` (a commit does not
                 fsync; the WAL is fsynced at each checkpoint), ``wal_autocheckpoint=0`` plus an
                 explicit ``PRAGMA wal_checkpoint(PASSIVE)`` every ``--ckpt-every`` batches (timed
                 apart: "ckpt max"), ``cache_size=-<--cache-mib * 1024>`` (64 MiB by default), page
                 size 4096 (the default), no mmap. Table ``kv(key TEXT PRIMARY KEY, value BLOB,
                 version INTEGER, expires_at INTEGER) WITHOUT ROWID`` and the partial index
                 ``kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL``.
``lmdb``         the ``lmdb`` package: two named databases, ``kv`` (key -> 16-byte header [version,
                 expires_at] + value) and ``expiry`` ((8-byte big-endian expires_at + key) -> empty);
                 map_size 64 GiB (address space only), ``sync=True, metasync=True``: every batch's
                 commit is fsynced.
``lmdb-nosync``  the same with ``sync=False`` and ``env.sync(True)`` every ``--ckpt-every`` batches (the
                 closest match to SQLite's synchronous=NORMAL + periodic checkpoint: a crash may undo
                 the last transactions; LMDB keeps integrity only if the filesystem preserves write
                 order).
``sorted``       the in-memory control: ``sortedcontainers.SortedDict`` key -> (value bytes, version,
                 expires_at), a ``SortedList`` of (expires_at, key) for expiry, ``gc.freeze()`` after
                 each step.
``bisect``       the reference, the design before issue 14: node/bench/heap_keystore.py ``KeyStore`` (a dict
                 of Records holding the decoded value, a Python list of keys kept sorted with
                 ``bisect.insort``, the ExpiryIndex heap), driven through ``KeyStore.set``. O(n) per new
                 key, so it stops at ``--ref-keys`` (1M).

At every ``--step`` keys a row per engine: insert rate over the step (keys / engine time, including
checkpoints or syncs; the rows are built outside the timed part), the CPU time of that work per key
(user + sys of the process: much less disturbed by the other load of a shared machine than the
wall-clock rate; fsync waits are not in it), p99 and max of the batch
transactions, the longest checkpoint/sync, RssAnon and RssFile (/proc/self/status), bytes on disk
(allocated: st_blocks; WAL apart), bytes written per key in the step (/proc/self/io: ``wchar``,
what the engine handed to write syscalls, and ``write_bytes``, the page cache the kernel charged as
dirtied — whole folios, so it can exceed the former), a 100-key prefix scan from
``webhooks:stripe:evt_a`` (median of 21), the 1000 first due keys of the expiry index (median of
5), a point get (mean of 1000 random stored keys; a read transaction each for LMDB, an autocommit
SELECT for SQLite) and the 1-minute load average.
At the end: a consistent copy of the whole store (SQLite online backup API to a file, LMDB
``env.copy``, in memory: a msgpack dump of every row, as a snapshot does), then the restart cost
(SQLite/LMDB: close, reopen, one get; in memory: rebuild from that dump, then one get), and for
SQLite/LMDB the open + one get of a copy of the files taken while open (what a kill -9 leaves:
SQLite then recovers its WAL).

An engine whose fill takes longer than ``--budget-s`` stops at the step where it crossed it (the
table says so). This is a shared 2-core machine: the load average and nproc are printed at the start
and end (and per row), and numbers within ~20% of each other should be read as equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import msgpack

PROVIDERS = ("stripe", "github", "shopify")
HANDLERS = {"stripe": "billing.invoice_paid", "github": "ci.push_received", "shopify": "orders.order_created"}
#: cluster time (ms) of the first write: 2026-01-01T00:00:00Z
T0_MS = 1_767_225_600_000
TTL_MS = 7 * 24 * 3600 * 1000
SCAN_PREFIX = "webhooks:stripe:evt_a"
SCAN_LIMIT = 100
DUE_LIMIT = 1000
GETS = 1000
INSTALL_HINT = "pip install -e '.[bakeoff]'"

#: a write as the log carries it: (key, msgpack value, version, expires_at ms, cluster time ms)
Row = tuple[str, bytes, int, int, int]
#: what a get returns: (value, version, expires_at ms or None); value is bytes except for ``bisect``
Stored = tuple[Any, int, int | None]


@dataclass(frozen=True)
class Settings:
    keys: int = 2_000_000
    step: int = 250_000
    batch: int = 200
    ckpt_every: int = 50
    cache_mib: int = 64
    map_size: int = 64 << 30
    ref_keys: int = 1_000_000
    budget_s: float = 900.0
    seed: int = 14


@dataclass
class StepRow:
    engine: str
    keys: int
    insert_rate: float  # keys/s over the step, engine time (batches + checkpoints/syncs)
    cpu_us_per_key: float  # CPU time (user + sys, this process) of the same, per key
    batch_p99_ms: float
    batch_max_ms: float
    ckpt_max_ms: float | None  # longest checkpoint (sqlite) / env.sync (lmdb-nosync); None: none
    rss_anon_mb: float
    rss_file_mb: float
    disk_mb: float | None  # None: nothing on disk (in memory)
    wal_mb: float | None
    write_kb_per_key: float  # bytes passed to write syscalls (/proc/self/io wchar) per key
    dirtied_kb_per_key: float  # page-cache bytes the kernel charged as dirtied (write_bytes) per key
    scan_us: float
    due_us: float
    get_us: float
    load1: float


@dataclass
class FinalRow:
    engine: str
    keys: int
    capped: str  # "" or why the fill stopped before --keys
    fill_s: float
    rss_anon_open_mb: float  # right after opening the empty store
    copy_s: float
    copy_mb: float
    close_ms: float
    restart_ms: float  # reopen + one get (sqlite, lmdb) or rebuild from the dump + one get (in memory)
    restart_kind: str
    #: open + one get of the files as a kill -9 leaves them (copied while open); None in memory
    crash_restart_ms: float | None


# ----------------------------------------------------------------------------------------- workload


def key_of(seed: int, i: int) -> str:
    d = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=9, key=seed.to_bytes(8, "little")).digest()
    return f"webhooks:{PROVIDERS[d[0] % len(PROVIDERS)]}:evt_{d[1:].hex()}"


def value_of(key: str, i: int, now_ms: int) -> bytes:
    doc = {
        "status": "done",
        "at": now_ms,
        "attempts": 1,
        "handler": HANDLERS[key.split(":", 2)[1]],
        "job": f"job_{i:012x}",
    }
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def row_of(seed: int, i: int) -> Row:
    key = key_of(seed, i)
    now = T0_MS + i
    return key, value_of(key, i, now), i + 1, now + TTL_MS, now


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# ----------------------------------------------------------------------------------------- process


def proc_status_kib() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("RssAnon", "RssFile", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


def io_counters() -> tuple[int, int]:
    """(wchar, write_bytes) of /proc/self/io: bytes handed to write syscalls, and page-cache bytes the
    kernel charged to this process as dirtied (whole folios: it can exceed what was written)."""
    found = {"wchar": 0, "write_bytes": 0}
    try:
        with open("/proc/self/io") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value)
    except OSError:
        pass
    return found["wchar"], found["write_bytes"]


def allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def tree_bytes(path: Path) -> int:
    return sum(allocated(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else allocated(path)


def machine() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, nproc {len(os.sched_getaffinity(0))}"


# ----------------------------------------------------------------------------------------- engines


class Engine(ABC):
    name = "?"
    #: PyPI packages (import names) this engine needs beyond the standard library and msgpack
    needs: tuple[str, ...] = ()

    def __init__(self, directory: Path, s: Settings) -> None:
        self.dir = directory
        self.s = s

    def prepare(self, rows: list[Row]) -> list[Any]:
        """Turn log rows into what ``insert_batch`` takes (outside the timed part)."""
        return rows

    @abstractmethod
    def insert_batch(self, rows: list[Any]) -> None:
        """One transaction: for each row, read the key's record, then write the new one."""

    def maintenance(self) -> bool:
        """Called every ``ckpt_every`` batches (timed); True if it did something."""
        return False

    def after_step(self) -> None:  # noqa: B027 (an optional hook: most engines need nothing)
        """Called after each step's inserts, before its measurements."""

    @abstractmethod
    def get(self, key: str) -> Stored | None: ...

    @abstractmethod
    def scan(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` stored keys starting with ``prefix``, sorted."""

    @abstractmethod
    def due(self, now_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` keys with expires_at <= now_ms, earliest expiry first."""

    def disk(self) -> tuple[int, int] | None:
        """(allocated bytes of the store including its WAL, of which WAL), or None in memory."""
        return None

    @abstractmethod
    def copy(self, dest: Path) -> int:
        """A consistent copy of the whole store at ``dest``; returns its size in bytes."""

    def crash_image(self, dest: Path) -> bool:
        """Copy the store's files as they are now, open (what a kill -9 leaves: the page cache
        survives the process), into ``dest`` with the same layout; False if there are none."""
        return False

    @abstractmethod
    def shutdown(self) -> None:
        """Close the store (the in-memory ones drop their structures)."""

    @abstractmethod
    def start(self) -> None:
        """Open it again: reopen the files, or rebuild from the dump ``copy`` wrote."""

    def close(self) -> None:
        self.shutdown()


class SqliteEngine(Engine):
    name = "sqlite"
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB, version INTEGER, "
        "expires_at INTEGER) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL",
    )
    SELECT_OLD = "SELECT version, expires_at FROM kv WHERE key = ?"
    UPSERT = (
        "INSERT INTO kv (key, value, version, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
        "SET value = excluded.value, version = excluded.version, expires_at = excluded.expires_at"
    )
    GET = "SELECT value, version, expires_at FROM kv WHERE key = ?"
    SCAN = "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
    DUE = (
        "SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at, key LIMIT ?"
    )

    def __init__(self, directory: Path, s: Settings) -> None:
        super().__init__(directory, s)
        self.path = directory / "state.db"
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA cache_size=-{self.s.cache_mib * 1024}")
        for stmt in self.SCHEMA:
            conn.execute(stmt)
        return conn

    def insert_batch(self, rows: list[Any]) -> None:
        ex = self.conn.execute
        ex("BEGIN")
        try:
            for key, value, version, expires, _now in rows:
                ex(self.SELECT_OLD, (key,)).fetchone()
                ex(self.UPSERT, (key, value, version, expires))
        except BaseException:
            ex("ROLLBACK")
            raise
        ex("COMMIT")

    def maintenance(self) -> bool:
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return True

    def get(self, key: str) -> Stored | None:
        row = self.conn.execute(self.GET, (key,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def scan(self, prefix: str, limit: int) -> list[str]:
        return [r[0] for r in self.conn.execute(self.SCAN, (prefix, prefix_end(prefix), limit))]

    def due(self, now_ms: int, limit: int) -> list[str]:
        return [r[0] for r in self.conn.execute(self.DUE, (now_ms, limit))]

    def query_plans(self) -> dict[str, str]:
        """EXPLAIN QUERY PLAN of the scan and the due query (the test checks they use the indexes)."""

        def plan(sql: str, args: tuple[Any, ...]) -> str:
            return " | ".join(r[3] for r in self.conn.execute("EXPLAIN QUERY PLAN " + sql, args))

        return {
            "scan": plan(self.SCAN, ("a", "b", 1)),
            "due": plan(self.DUE, (0, 1)),
        }

    def disk(self) -> tuple[int, int] | None:
        wal = allocated(self.path.with_name(self.path.name + "-wal"))
        shm = allocated(self.path.with_name(self.path.name + "-shm"))
        return allocated(self.path) + wal + shm, wal

    def copy(self, dest: Path) -> int:
        dst = sqlite3.connect(dest)
        try:
            self.conn.backup(dst)  # the online backup API, all pages in one step
        finally:
            dst.close()
        return allocated(dest)

    def crash_image(self, dest: Path) -> bool:
        dest.mkdir()
        for f in (self.path, self.path.with_name(self.path.name + "-wal")):
            if f.exists():
                shutil.copyfile(f, dest / f.name)
        return True

    def shutdown(self) -> None:
        self.conn.close()

    def start(self) -> None:
        self.conn = self._open()


class LmdbEngine(Engine):
    name = "lmdb"
    needs = ("lmdb",)
    sync = True
    HEADER = struct.Struct(">qq")  # version, expires_at (-1: never)
    EXP = struct.Struct(">Q")

    def __init__(self, directory: Path, s: Settings) -> None:
        super().__init__(directory, s)
        self.path = directory / "lmdb"
        self._open()

    def _open(self) -> None:
        import lmdb

        self.env = lmdb.open(
            str(self.path), map_size=self.s.map_size, max_dbs=2, sync=self.sync, metasync=True
        )
        self.kv = self.env.open_db(b"kv")
        self.exp = self.env.open_db(b"expiry")

    def insert_batch(self, rows: list[Any]) -> None:
        head, exp_key, kv, exp = self.HEADER, self.EXP, self.kv, self.exp
        with self.env.begin(write=True) as txn:
            for key, value, version, expires, _now in rows:
                kb = key.encode()
                old = txn.get(kb, db=kv)
                if old is not None:
                    old_exp = head.unpack_from(old)[1]
                    if old_exp >= 0:
                        txn.delete(exp_key.pack(old_exp) + kb, db=exp)
                txn.put(kb, head.pack(version, -1 if expires is None else expires) + value, db=kv)
                if expires is not None:
                    txn.put(exp_key.pack(expires) + kb, b"", db=exp)

    def maintenance(self) -> bool:
        if self.sync:
            return False
        self.env.sync(True)
        return True

    def get(self, key: str) -> Stored | None:
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self.kv)
        if raw is None:
            return None
        version, expires = self.HEADER.unpack_from(raw)
        return raw[self.HEADER.size :], version, None if expires < 0 else expires

    def scan(self, prefix: str, limit: int) -> list[str]:
        p = prefix.encode()
        out: list[str] = []
        with self.env.begin() as txn, txn.cursor(db=self.kv) as cur:
            if not cur.set_range(p):
                return out
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(p) or len(out) == limit:
                    break
                out.append(k.decode())
        return out

    def due(self, now_ms: int, limit: int) -> list[str]:
        out: list[str] = []
        with self.env.begin() as txn, txn.cursor(db=self.exp) as cur:
            if not cur.first():
                return out
            for k in cur.iternext(keys=True, values=False):
                if len(out) == limit or self.EXP.unpack_from(k)[0] > now_ms:
                    break
                out.append(k[self.EXP.size :].decode())
        return out

    def disk(self) -> tuple[int, int] | None:
        return tree_bytes(self.path), 0

    def copy(self, dest: Path) -> int:
        dest.mkdir()
        self.env.copy(str(dest))
        return tree_bytes(dest)

    def crash_image(self, dest: Path) -> bool:
        (dest / self.path.name).mkdir(parents=True)
        shutil.copyfile(self.path / "data.mdb", dest / self.path.name / "data.mdb")
        return True

    def shutdown(self) -> None:
        self.env.close()

    def start(self) -> None:
        self._open()


class LmdbNoSyncEngine(LmdbEngine):
    name = "lmdb-nosync"
    sync = False


class _DumpMixin:
    """In memory: the consistent copy is a msgpack dump of every row [key, value, version,
    expires_at] in key order, packed row by row (as the node's snapshot does); restart rebuilds from it."""

    dump_path: Path | None = None

    def write_dump(self, dest: Path, n: int, rows: Any) -> int:
        packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        with open(dest, "wb") as f:
            buf = bytearray(packer.pack_array_header(n))
            for row in rows:
                buf += packer.pack(row)
                if len(buf) >= 1 << 20:
                    f.write(buf)
                    buf.clear()
            f.write(buf)
        self.dump_path = dest
        return allocated(dest)

    def read_dump(self) -> list[list[Any]]:
        assert self.dump_path is not None, "copy() first: restart rebuilds from its dump"
        rows: list[list[Any]] = msgpack.unpackb(self.dump_path.read_bytes(), raw=False)
        return rows


class SortedEngine(_DumpMixin, Engine):
    name = "sorted"
    needs = ("sortedcontainers",)

    def __init__(self, directory: Path, s: Settings) -> None:
        super().__init__(directory, s)
        from sortedcontainers import SortedDict, SortedList

        self.data: SortedDict = SortedDict()
        self.expiry: SortedList = SortedList()

    def insert_batch(self, rows: list[Any]) -> None:
        data, expiry = self.data, self.expiry
        for key, value, version, expires, _now in rows:
            old = data.get(key)
            if old is not None and old[2] is not None:
                expiry.remove((old[2], key))
            data[key] = (value, version, expires)
            if expires is not None:
                expiry.add((expires, key))

    def after_step(self) -> None:
        gc.freeze()

    def get(self, key: str) -> Stored | None:
        rec: Stored | None = self.data.get(key)
        return rec

    def scan(self, prefix: str, limit: int) -> list[str]:
        out: list[str] = []
        for k in islice(self.data.irange(minimum=prefix), limit):
            if not k.startswith(prefix):
                break
            out.append(k)
        return out

    def due(self, now_ms: int, limit: int) -> list[str]:
        out: list[str] = []
        for expires, key in islice(self.expiry, limit):
            if expires > now_ms:
                break
            out.append(key)
        return out

    def copy(self, dest: Path) -> int:
        rows = ([k, v, ver, exp] for k, (v, ver, exp) in self.data.items())
        return self.write_dump(dest, len(self.data), rows)

    def shutdown(self) -> None:
        from sortedcontainers import SortedDict, SortedList

        self.data, self.expiry = SortedDict(), SortedList()
        gc.collect()

    def start(self) -> None:
        from sortedcontainers import SortedDict, SortedList

        rows = self.read_dump()
        self.data = SortedDict((k, (v, ver, exp)) for k, v, ver, exp in rows)
        self.expiry = SortedList((exp, k) for k, _, _, exp in rows if exp is not None)
        del rows
        gc.freeze()


class BisectEngine(_DumpMixin, Engine):
    """The design before the store (node/bench/heap_keystore.py): KeyStore.set per write, scan, due."""

    name = "bisect"

    def __init__(self, directory: Path, s: Settings) -> None:
        super().__init__(directory, s)
        from raftstate.node.bench.heap_keystore import KeyStore

        self.ks = KeyStore()
        self.now = T0_MS

    def prepare(self, rows: list[Row]) -> list[Any]:
        from raftstate.node.state.commands import SetKey

        # the node holds the decoded value (what apply gets from the log entry)
        return [
            (SetKey(k, msgpack.unpackb(v, raw=False), expires_at_ms=exp), ver, now)
            for k, v, ver, exp, now in rows
        ]

    def insert_batch(self, rows: list[Any]) -> None:
        ks_set = self.ks.set
        for op, version, now in rows:
            ks_set(version, now, op)
        self.now = rows[-1][2]

    def get(self, key: str) -> Stored | None:
        rec = self.ks.live(key, self.now)
        return None if rec is None else (rec.value, rec.version, rec.expires_at_ms)

    def scan(self, prefix: str, limit: int) -> list[str]:
        return self.ks.scan(prefix, None, limit, self.now)[0]

    def due(self, now_ms: int, limit: int) -> list[str]:
        return self.ks.due(now_ms, limit)

    def copy(self, dest: Path) -> int:
        n, rows = self.ks.rows_later()  # what the node's snapshot does: shallow copies, then pack
        return self.write_dump(dest, n, rows())

    def shutdown(self) -> None:
        from raftstate.node.bench.heap_keystore import KeyStore

        self.ks = KeyStore()
        gc.collect()

    def start(self) -> None:
        from raftstate.node.bench.heap_keystore import KeyStore

        ks = KeyStore()
        ks.restore(self.read_dump())  # what restoring a snapshot does
        self.ks = ks


ENGINES: dict[str, type[Engine]] = {
    e.name: e for e in (SqliteEngine, LmdbEngine, LmdbNoSyncEngine, SortedEngine, BisectEngine)
}


def missing_packages(name: str) -> list[str]:
    return [m for m in ENGINES[name].needs if importlib.util.find_spec(m) is None]


def target_keys(name: str, s: Settings) -> int:
    return min(s.keys, s.ref_keys) if name == "bisect" else s.keys


# ----------------------------------------------------------------------------------------- one engine


def _p99(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_step(
    eng: Engine,
    s: Settings,
    n: int,
    step_keys: int,
    lat: list[float],
    ckpt: list[float],
    cpu_s: float,
    wrote: tuple[int, int],
) -> StepRow:
    engine_s = sum(lat) + sum(ckpt)
    status = proc_status_kib()
    scan_s = _median_time(lambda: eng.scan(SCAN_PREFIX, SCAN_LIMIT), 21)
    due_now = T0_MS + n + TTL_MS  # every stored key is due by then: the query returns DUE_LIMIT keys
    due_s = _median_time(lambda: eng.due(due_now, DUE_LIMIT), 5)
    rng = random.Random(s.seed * 1_000_003 + n)
    keys = [key_of(s.seed, j) for j in rng.sample(range(n), min(GETS, n))]
    get = eng.get
    t0 = time.perf_counter()
    got = [get(k) for k in keys]
    get_s = (time.perf_counter() - t0) / len(keys)
    assert all(g is not None for g in got), f"{eng.name}: a stored key was not found"
    disk = eng.disk()
    return StepRow(
        engine=eng.name,
        keys=n,
        insert_rate=step_keys / engine_s if engine_s > 0 else float("inf"),
        cpu_us_per_key=cpu_s / step_keys * 1e6,
        batch_p99_ms=_p99(lat) * 1e3,
        batch_max_ms=max(lat) * 1e3,
        ckpt_max_ms=max(ckpt) * 1e3 if ckpt else None,
        rss_anon_mb=status["RssAnon"] / 1024,
        rss_file_mb=status["RssFile"] / 1024,
        disk_mb=None if disk is None else disk[0] / 2**20,
        wal_mb=None if disk is None or isinstance(eng, LmdbEngine) else disk[1] / 2**20,
        write_kb_per_key=wrote[0] / 1024 / step_keys,
        dirtied_kb_per_key=wrote[1] / 1024 / step_keys,
        scan_us=scan_s * 1e6,
        due_us=due_s * 1e6,
        get_us=get_s * 1e6,
        load1=os.getloadavg()[0],
    )


def open_engine(name: str, directory: Path, s: Settings) -> Engine:
    gc.collect()
    return ENGINES[name](directory, s)


def fill(eng: Engine, s: Settings, emit: Callable[[StepRow], None]) -> tuple[int, str, float]:
    """Insert keys 0..target-1 in batches, a measured row per step. Returns (keys stored, why it
    stopped early or "", seconds spent)."""
    target = target_keys(eng.name, s)
    capped = f"capped at --ref-keys {s.ref_keys:,} (O(n) per insert)" if target < s.keys else ""
    started = time.monotonic()
    i = batches = 0
    while i < target:
        step_start, step_end = i, min(target, (i // s.step + 1) * s.step)
        lat: list[float] = []
        ckpt: list[float] = []
        cpu_s = 0.0
        io0 = io_counters()
        while i < step_end:
            n = min(s.batch, step_end - i)
            rows = eng.prepare([row_of(s.seed, j) for j in range(i, i + n)])
            c0, t0 = time.process_time(), time.perf_counter()
            eng.insert_batch(rows)
            lat.append(time.perf_counter() - t0)
            cpu_s += time.process_time() - c0
            i += n
            batches += 1
            if batches % s.ckpt_every == 0:
                c0, t0 = time.process_time(), time.perf_counter()
                if eng.maintenance():
                    ckpt.append(time.perf_counter() - t0)
                cpu_s += time.process_time() - c0
        io1 = io_counters()
        wrote = (io1[0] - io0[0], io1[1] - io0[1])
        eng.after_step()
        emit(measure_step(eng, s, i, i - step_start, lat, ckpt, cpu_s, wrote))
        if i < target and time.monotonic() - started > s.budget_s:
            capped = f"capped at {i:,} keys: fill exceeded --budget-s {s.budget_s:.0f}"
            break
    return i, capped, time.monotonic() - started


def finish(
    eng: Engine, s: Settings, directory: Path, n: int, capped: str, fill_s: float, rss0: float
) -> FinalRow:
    """The consistent copy, then the restart (close, reopen or rebuild, one get of a stored key)."""
    dest = directory / ("copy" if isinstance(eng, LmdbEngine) else "copy.bin")
    t0 = time.perf_counter()
    size = eng.copy(dest)
    copy_s = time.perf_counter() - t0
    probe = key_of(s.seed, n // 2)
    crash_dir = directory / "crash"
    has_image = eng.crash_image(crash_dir)
    t0 = time.perf_counter()
    eng.shutdown()
    close_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.start()
    got = eng.get(probe)
    restart_s = time.perf_counter() - t0
    assert got is not None, f"{eng.name}: key {probe} lost across the restart"
    crash_ms: float | None = None
    if has_image:
        t0 = time.perf_counter()
        image = type(eng)(crash_dir, s)
        got = image.get(probe)
        crash_ms = (time.perf_counter() - t0) * 1e3
        image.close()
        shutil.rmtree(crash_dir)
        assert got is not None, f"{eng.name}: key {probe} missing from the crash image"
    kind = "rebuild from dump + get" if isinstance(eng, _DumpMixin) else "reopen + get"
    return FinalRow(
        eng.name,
        n,
        capped,
        fill_s,
        rss0,
        copy_s,
        size / 2**20,
        close_s * 1e3,
        restart_s * 1e3,
        kind,
        crash_ms,
    )


def run_engine(name: str, directory: Path, s: Settings, emit: Callable[[StepRow], None]) -> FinalRow:
    eng = open_engine(name, directory, s)
    rss0 = proc_status_kib()["RssAnon"] / 1024
    try:
        n, capped, fill_s = fill(eng, s, emit)
        return finish(eng, s, directory, n, capped, fill_s, rss0)
    finally:
        eng.close()


def worker(name: str, directory: Path, s: Settings) -> int:
    """In the engine's own process: JSON lines on stdout, one per step, then the final one."""

    def emit(row: StepRow) -> None:
        print(json.dumps({"step": dataclasses.asdict(row)}), flush=True)

    final = run_engine(name, directory, s, emit)
    print(json.dumps({"final": dataclasses.asdict(final)}), flush=True)
    return 0


# ----------------------------------------------------------------------------------------- report

STEP_COLUMNS = (
    ("engine", "engine", "{}"),
    ("keys", "keys", "{:,}"),
    ("insert_rate", "ins/s", "{:,.0f}"),
    ("cpu_us_per_key", "CPU µs/key", "{:.0f}"),
    ("batch_p99_ms", "p99 batch ms", "{:.2f}"),
    ("batch_max_ms", "max batch ms", "{:.1f}"),
    ("ckpt_max_ms", "ckpt/sync max ms", "{:.1f}"),
    ("rss_anon_mb", "RssAnon MB", "{:.0f}"),
    ("rss_file_mb", "RssFile MB", "{:.0f}"),
    ("disk_mb", "disk MB", "{:.0f}"),
    ("wal_mb", "of it WAL MB", "{:.1f}"),
    ("write_kb_per_key", "written KB/key", "{:.2f}"),
    ("dirtied_kb_per_key", "dirtied KB/key", "{:.2f}"),
    ("scan_us", "scan 100 µs", "{:,.0f}"),
    ("due_us", "due 1000 µs", "{:,.0f}"),
    ("get_us", "get µs", "{:.1f}"),
    ("load1", "load1", "{:.2f}"),
)
FINAL_COLUMNS = (
    ("engine", "engine", "{}"),
    ("keys", "keys", "{:,}"),
    ("fill_s", "fill s", "{:,.0f}"),
    ("rss_anon_open_mb", "RssAnon empty MB", "{:.0f}"),
    ("copy_s", "copy s", "{:.2f}"),
    ("copy_mb", "copy MB", "{:.0f}"),
    ("close_ms", "close ms", "{:,.1f}"),
    ("restart_ms", "restart ms", "{:,.1f}"),
    ("restart_kind", "restart is", "{}"),
    ("crash_restart_ms", "after kill -9 ms", "{:,.1f}"),
    ("capped", "note", "{}"),
)


def md_row(values: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> str:
    cells = []
    for field, _, fmt in columns:
        v = values.get(field)
        cells.append("-" if v is None or v == "" else fmt.format(v))
    return "| " + " | ".join(cells) + " |"


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = (
        "|"
        + "|".join("---" if f in ("engine", "restart_kind", "capped") else "---:" for f, _, _ in columns)
        + "|"
    )
    return [head, rule, *(md_row(r, columns) for r in rows)]


def versions() -> str:
    parts = [f"Python {sys.version.split()[0]}", f"SQLite {sqlite3.sqlite_version}"]
    try:
        import lmdb

        parts.append(f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})")
    except ImportError:
        pass
    try:
        import sortedcontainers

        parts.append(f"sortedcontainers {sortedcontainers.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def plot(steps: Sequence[dict[str, Any]], names: Sequence[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no plot: matplotlib is not installed; {path} not written)", file=sys.stderr)
        return False
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    for name in names:
        rows = [r for r in steps if r["engine"] == name]
        if not rows:
            continue
        xs = [r["keys"] / 1e6 for r in rows]
        (line,) = ax1.plot(xs, [r["insert_rate"] / 1e3 for r in rows], marker="o", label=name)
        ax2.plot(xs, [r["cpu_us_per_key"] for r in rows], marker="o", label=name)
        ax3.plot(xs, [r["rss_anon_mb"] for r in rows], marker="o", label=f"{name} RssAnon")
        if rows[-1]["rss_file_mb"] > 2 * rows[0]["rss_file_mb"]:  # a memory-mapped store
            rss_file = [r["rss_file_mb"] for r in rows]
            ax3.plot(xs, rss_file, ls="--", color=line.get_color(), label=f"{name} RssFile (mmap)")
    ax1.set(xlabel="keys (millions)", ylabel="insert rate over the step (k keys/s, wall)", yscale="log")
    ax2.set(xlabel="keys (millions)", ylabel="CPU µs per key written (user + sys)")
    ax3.set(xlabel="keys (millions)", ylabel="MB")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("raftstate issue 14: storage engine bake-off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def orchestrate(args: argparse.Namespace, s: Settings) -> int:
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        print(f"unknown engine(s) {unknown}; known: {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    head = [
        f"# Storage engine bake-off ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"- start: {machine()}",
        f"- {versions()}",
        f"- keys {s.keys:,} (bisect reference up to {min(s.keys, s.ref_keys):,}), step {s.step:,}, "
        f"batch {s.batch} writes per transaction, checkpoint/sync every {s.ckpt_every} batches, "
        f"SQLite cache_size -{s.cache_mib * 1024} ({s.cache_mib} MiB), "
        f"fill budget {s.budget_s:.0f} s per engine",
        f"- command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
    ]
    print("\n".join(head), flush=True)
    skipped: list[str] = []
    steps: list[dict[str, Any]] = []
    finals: list[dict[str, Any]] = []
    failed: list[str] = []
    printed_head = False
    base = Path(args.dir) if args.dir else None
    for name in names:
        missing = missing_packages(name)
        if missing:
            msg = f"{name}: skipped, {', '.join(missing)} not installed (install: {INSTALL_HINT})"
            print(msg, flush=True)
            skipped.append(msg)
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"raftstate-bakeoff-{name}-", dir=base))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(workdir)]
        cmd += [f"--keys={s.keys}", f"--step={s.step}", f"--batch={s.batch}", f"--ckpt-every={s.ckpt_every}"]
        cmd += [f"--cache-mib={s.cache_mib}", f"--ref-keys={s.ref_keys}", f"--budget-s={s.budget_s}"]
        cmd += [f"--seed={s.seed}"]
        print(f"\n== {name} ({machine()})", flush=True)
        try:
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if not line.startswith("{"):
                        print(line, end="", flush=True)
                        continue
                    msg = json.loads(line)
                    if "step" in msg:
                        if not printed_head:
                            print("\n".join(md_table([], STEP_COLUMNS)), flush=True)
                            printed_head = True
                        steps.append(msg["step"])
                        print(md_row(msg["step"], STEP_COLUMNS), flush=True)
                    else:
                        finals.append(msg["final"])
                        print(md_row(msg["final"], FINAL_COLUMNS), flush=True)
            if proc.returncode != 0:
                failed.append(f"{name}: worker exited with {proc.returncode}")
                print(failed[-1], flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    order = {n: i for i, n in enumerate(names)}
    minutes = (datetime.now(UTC) - started).total_seconds() / 60
    steps.sort(key=lambda r: (r["keys"], order[r["engine"]]))
    lines = [
        *head,
        f"- end: {machine()} ({datetime.now(UTC):%H:%M} UTC, {minutes:.0f} min after the start)",
        *(f"- {m}" for m in skipped + failed),
        "",
        "Per step (insert rate and batch latencies over the last step; the rest measured at that size):",
        "",
        *md_table(steps, STEP_COLUMNS),
        "",
        "At the end (consistent copy of the whole store, then the restart cost):",
        "",
        *md_table(finals, FINAL_COLUMNS),
    ]
    print("\n\n" + "\n".join(lines), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"\nwritten: {args.out}")
    if args.json:
        doc = {"report": lines, "settings": dataclasses.asdict(s), "steps": steps, "finals": finals}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"written: {args.json}")
    if args.png and plot(steps, names, Path(args.png)):
        print(f"written: {args.png}")
    return 1 if failed else 0


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=d.keys, help="fill every engine to this many keys")
    ap.add_argument("--step", type=int, default=d.step, help="a measured row every this many keys")
    ap.add_argument("--batch", type=int, default=d.batch, help="writes per transaction")
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="batches between checkpoints/syncs")
    ap.add_argument("--cache-mib", type=int, default=d.cache_mib, help="SQLite page cache (cache_size)")
    ap.add_argument("--ref-keys", type=int, default=d.ref_keys, help="cap of the O(n) bisect reference")
    ap.add_argument("--budget-s", type=float, default=d.budget_s, help="stop an engine's fill after this")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--dir", help="where the engines' temporary stores go (default: the system temp dir)")
    ap.add_argument("--out", help="also write the markdown report to this file")
    ap.add_argument("--json", help="also write every row, unformatted, to this file")
    ap.add_argument("--png", help="plot insert rate and RssAnon against keys to this file (matplotlib)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.keys < 1 or args.step < 1 or args.batch < 1 or args.ckpt_every < 1:
        ap.error("--keys, --step, --batch and --ckpt-every must be positive")
    s = Settings(
        keys=args.keys,
        step=args.step,
        batch=args.batch,
        ckpt_every=args.ckpt_every,
        cache_mib=args.cache_mib,
        ref_keys=args.ref_keys,
        budget_s=args.budget_s,
        seed=args.seed,
    )
    return args, s


def main(argv: Sequence[str] | None = None) -> int:
    args, s = parse(argv)
    if args.worker:
        return worker(args.worker, Path(args.workdir), s)
    return orchestrate(args, s)


if __name__ == "__main__":
    sys.exit(main())
