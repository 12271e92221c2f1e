"""The Storage seam: DiskStorage and its in-memory twin obey one contract (raft/ready.py persist step).

Contract tests run against both; then DiskStorage alone: recovery across restarts and damage,
group commit, the fsync hook, and durability across a real ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftstate.node.storage.errors import DataDirLocked, StorageCorruption, StorageIOError
from raftstate.node.storage.snapshot_store import SnapshotStore
from raftstate.node.storage.store import DiskStorage, LoadedState, MemoryStorage, Storage
from raftstate.raft.messages import Entry, HardState, Membership, SnapshotMeta
from raftstate.raft.ready import PersistedState, SnapshotToInstall

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))


def ent(index: int, term: int = 1, size: int = 30) -> Entry:
    return Entry(index, term, time_ms=index, data=bytes([index % 256]) * size)


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [ent(i, term) for i in range(lo, hi + 1)]


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERS, time_ms=index)


def install(index: int, term: int = 1) -> SnapshotToInstall:
    return SnapshotToInstall(meta(index, term), f"sm@{index}".encode())


class Harness:
    """One storage under test, and how to "restart" it (reopen from disk, or reload the twin)."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.storage: Storage = self._open()
        self.storage.load()

    def _open(self) -> Storage:
        if self.kind == "memory":
            return MemoryStorage()
        return DiskStorage(self.root, node_id="n1", segment_bytes=400)

    def restart(self) -> LoadedState:
        if self.kind == "disk":
            self.storage.close()
            self.storage = self._open()
        return self.storage.load()


@pytest.fixture(params=["disk", "memory"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "n1")
    yield harness
    harness.storage.close()


# --------------------------------------------------------------------------- the contract (both)


def test_a_fresh_node_loads_nothing(h: Harness) -> None:
    assert h.restart() == LoadedState(PersistedState(), None)


def test_saved_state_survives_a_restart(h: Harness) -> None:
    h.storage.save(HardState(term=2, vote="n1", commit=0), ents(1, 3, term=2), None)
    h.storage.save(HardState(term=2, vote="n1", commit=3), ents(4, 20, term=2), None)
    loaded = h.restart()
    assert loaded.persisted == PersistedState(HardState(2, "n1", 3), None, tuple(ents(1, 20, term=2)))
    assert loaded.snapshot_data is None


def test_entries_at_or_below_the_last_index_replace_the_stored_suffix(h: Harness) -> None:
    """Ready.entries may start at or below what was persisted: truncate there, then append."""
    h.storage.save(None, ents(1, 20), None)
    h.storage.save(None, ents(8, 9, term=2), None)
    assert h.restart().persisted.entries == (*ents(1, 7), *ents(8, 9, term=2))


def test_an_installed_snapshot_replaces_the_whole_log(h: Harness) -> None:
    """Ready.snapshot: store it, discard every stored entry; entries in the same Ready follow it."""
    h.storage.save(HardState(1, "n2", 5), ents(1, 10), None)
    h.storage.save(HardState(3, "n2", 30), [ent(31, term=3)], install(30, term=3))
    loaded = h.restart()
    assert loaded.persisted == PersistedState(HardState(3, "n2", 30), meta(30, 3), (ent(31, term=3),))
    assert loaded.snapshot_data == b"sm@30"
    assert h.storage.snapshot_data() == (meta(30, 3), b"sm@30")


def test_a_local_snapshot_hides_the_entries_it_covers(h: Harness) -> None:
    h.storage.save(None, ents(1, 50), None)
    h.storage.save_snapshot(meta(30), b"sm@30")
    loaded = h.restart()
    assert loaded.persisted.snapshot == meta(30)
    assert loaded.persisted.entries == tuple(ents(31, 50))
    assert loaded.snapshot_data == b"sm@30"
    h.storage.save(None, [ent(51)], None)
    assert h.restart().persisted.entries[-1] == ent(51)


def test_a_local_snapshot_overtaken_by_an_install_is_ignored(h: Harness) -> None:
    """The driver writes local snapshots in the background: a leader's snapshot may land first."""
    h.storage.save(None, ents(1, 10), None)
    h.storage.save(None, [], install(40))
    h.storage.save_snapshot(meta(10), b"old")
    assert h.restart().persisted.snapshot == meta(40)


def test_misuse_raises_value_error_and_writes_nothing(h: Harness) -> None:
    h.storage.save(None, ents(1, 10), None)
    h.storage.save_snapshot(meta(5), b"sm")
    with pytest.raises(ValueError):
        h.storage.save(None, [ent(12)], None)  # a gap
    with pytest.raises(ValueError):
        h.storage.save(None, [ent(11), ent(13)], None)  # not contiguous
    with pytest.raises(ValueError):
        h.storage.save(None, [ent(5)], None)  # inside the snapshot
    with pytest.raises(ValueError):
        h.storage.save(None, [], install(4))  # an install older than the snapshot
    with pytest.raises(ValueError):
        h.storage.save(None, [ent(12)], install(20))  # entries not right after the install
    with pytest.raises(ValueError):
        h.storage.save_snapshot(meta(11), b"sm")  # beyond the stored log
    with pytest.raises(ValueError, match="says term 2, the log 1"):
        h.storage.save_snapshot(meta(8, term=2), b"sm")  # disagrees with the log
    loaded = h.restart()
    assert loaded.persisted.snapshot == meta(5) and loaded.persisted.entries == tuple(ents(6, 10))


@pytest.mark.parametrize("seed", range(4))
def test_disk_and_memory_agree_on_random_histories(tmp_path: Path, seed: int) -> None:
    """A seeded random history of Ready batches, snapshots and restarts: the disk storage must
    load exactly what its in-memory twin loads, after every step. Replay: -k 'agree and <seed>'."""
    rng = random.Random(seed)
    disk, mem = Harness("disk", tmp_path / "n1"), Harness("memory", tmp_path)
    snap, last, term = 0, 0, 1
    for step in range(50):
        op = rng.choice(["append", "append", "append", "overwrite", "install", "snapshot", "restart"])
        hs = HardState(term, "n1", rng.randint(0, last)) if rng.random() < 0.5 else None
        entries: list[Entry] = []
        to_install = None
        if op == "append":
            entries = [ent(i, term, rng.randint(0, 200)) for i in range(last + 1, last + rng.randint(1, 8))]
        elif op == "overwrite" and last > snap:
            term += 1
            start = rng.randint(snap + 1, last)
            entries = [ent(i, term, rng.randint(0, 200)) for i in range(start, start + rng.randint(1, 5))]
        elif op == "install":
            term += 1
            to_install = install(last + rng.randint(1, 5), term)
            entries = [ent(to_install.meta.index + 1, term)] if rng.random() < 0.5 else []
        elif op == "snapshot" and last > snap:
            at = rng.randint(snap + 1, last)
            at_term = mem.storage.load().persisted.entries[at - snap - 1].term
            for x in (disk, mem):
                x.storage.save_snapshot(meta(at, at_term), b"local")
            snap = at
        for x in (disk, mem):
            if op == "restart":
                x.restart()
            else:
                x.storage.save(hs, entries, to_install)
        if to_install is not None:
            snap = last = to_install.meta.index
        if entries:
            last = entries[-1].index
        assert disk.storage.load() == mem.storage.load(), f"seed {seed}, step {step} ({op})"
    assert disk.restart() == mem.restart(), f"seed {seed}, final restart"
    disk.storage.close()


# --------------------------------------------------------------------------- disk only


def test_group_commit_one_fsync_per_save_and_none_when_nothing_changed(tmp_path: Path) -> None:
    fsyncs: list[float] = []
    s = DiskStorage(tmp_path, node_id="n1", on_fsync=fsyncs.append)
    s.load()
    fsyncs.clear()
    s.save(None, ents(1, 100), None)
    assert len(fsyncs) == 2  # the segment, and the directory that gained it
    fsyncs.clear()
    s.save(None, ents(101, 200), None)
    assert len(fsyncs) == 1  # 100 entries, one fdatasync
    fsyncs.clear()
    s.save(HardState(1, "n1", 0), [], None)
    assert len(fsyncs) == 2  # hard state: the temp file and the directory after the rename
    fsyncs.clear()
    s.save(HardState(1, "n1", 0), [], None)
    assert fsyncs == []  # unchanged hard state is not rewritten
    s.close()


def test_corrupt_newest_snapshot_falls_back_when_the_log_covers_the_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is compacted only up to the older retained snapshot, so the older one plus the log
    rebuild exactly the state the newest one held."""
    with DiskStorage(tmp_path, node_id="n1", segment_bytes=300) as s:
        s.load()
        s.save(None, ents(1, 60), None)
        s.save_snapshot(meta(20), b"sm@20")
        s.save_snapshot(meta(40), b"sm@40")
    newest = tmp_path / "snapshots" / "snap-00000000000000000040-1.snap"
    raw = bytearray(newest.read_bytes())
    raw[-7] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING), DiskStorage(tmp_path, node_id="n1") as s:
        loaded = s.load()
        assert loaded.persisted.snapshot == meta(20) and loaded.snapshot_data == b"sm@20"
        assert loaded.persisted.entries == tuple(ents(21, 60))
        assert s.snapshot_data() == (meta(20), b"sm@20")
    assert str(newest) in caplog.text and "fell back to the snapshot at 20" in caplog.text
    assert newest.with_name(newest.name + ".corrupt").exists() and not newest.exists()


def test_corrupt_newest_snapshot_is_an_error_when_the_log_does_not_cover(tmp_path: Path) -> None:
    """After an install from the leader the log restarts at its index: nothing to fall back on."""
    with DiskStorage(tmp_path, node_id="n1") as s:
        s.load()
        s.save(None, ents(1, 10), None)
        s.save_snapshot(meta(5), b"sm@5")
        s.save(None, [ent(31)], install(30))
    newest = tmp_path / "snapshots" / "snap-00000000000000000030-1.snap"
    newest.write_bytes(newest.read_bytes()[:-1])
    with DiskStorage(tmp_path, node_id="n1") as s, pytest.raises(StorageCorruption) as exc:
        s.load()
    assert exc.value.path == newest
    assert "no longer holds entries 6..30" in str(exc.value) and "catches up from the leader" in str(
        exc.value
    )
    assert newest.exists()  # refused, not "repaired"


@pytest.mark.parametrize("old_log_term", [1, 3])
def test_an_install_interrupted_before_the_log_reset(tmp_path: Path, old_log_term: int) -> None:
    """Crash after the installed snapshot is durable but before the log is discarded. Raft Fig. 13:
    a log whose entry at the snapshot index has the snapshot's term continues it; any other is
    superseded and dropped."""
    with DiskStorage(tmp_path, node_id="n1") as s:
        s.load()
        s.save(None, ents(1, 20, term=old_log_term), None)
    SnapshotStore(tmp_path / "snapshots").write(meta(15, term=3), b"sm@15")  # the crash point
    with DiskStorage(tmp_path, node_id="n1") as s:
        loaded = s.load()
        assert loaded.persisted.snapshot == meta(15, 3)
        expected = ents(16, 20, term=3) if old_log_term == 3 else []
        assert loaded.persisted.entries == tuple(expected)
        s.save(None, [ent(16, term=4)], None)
    with DiskStorage(tmp_path, node_id="n1") as s:
        assert s.load().persisted.entries == (ent(16, term=4),)


def test_a_log_that_starts_after_the_snapshot_is_corruption(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, node_id="n1", segment_bytes=300) as s:
        s.load()
        s.save(None, ents(1, 40), None)
    next(iter(sorted((tmp_path / "log").iterdir()))).unlink()
    with DiskStorage(tmp_path, node_id="n1") as s, pytest.raises(StorageCorruption, match="are missing"):
        s.load()


def test_a_corrupt_hard_state_refuses_to_load(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, node_id="n1") as s:
        s.load()
        s.save(HardState(5, "n3", 0), [], None)
    raw = bytearray((tmp_path / "hard_state").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "hard_state").write_bytes(bytes(raw))
    with DiskStorage(tmp_path, node_id="n1") as s, pytest.raises(StorageCorruption, match="hard_state"):
        s.load()


def test_after_an_io_error_the_storage_refuses_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync leaves the page cache and the disk in an unknown relation: never retry."""
    s = DiskStorage(tmp_path, node_id="n1")
    s.load()

    def eio(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(StorageIOError, match="restart the process"):
        s.save(None, ents(1, 3), None)
    monkeypatch.undo()
    with pytest.raises(StorageIOError, match="failed earlier"):
        s.save(None, ents(1, 3), None)
    s.close()


def test_two_storages_on_one_data_dir_are_refused(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, node_id="n1"), pytest.raises(DataDirLocked):
        DiskStorage(tmp_path, node_id="n1")


# --------------------------------------------------------------------------- kill -9

_WRITER = """
import sys
from raftstate.node.storage.store import DiskStorage
from raftstate.raft.messages import Entry, HardState

def data(j):
    return bytes([j % 256]) * (j * 7919 % 300_000)

s = DiskStorage(sys.argv[1], node_id="n1", segment_bytes=1024 * 1024)
entries = s.load().persisted.entries
i = entries[-1].index + 1 if entries else 1
while True:
    batch = [Entry(j, 1, j, data=data(j)) for j in range(i, i + 1 + i % 3)]
    s.save(HardState(1, "n1", i - 1), batch, None)
    i = batch[-1].index + 1
    print(batch[-1].index, flush=True)
"""


def _expected_data(j: int) -> bytes:
    # Up to ~300 KB per entry: a SIGKILL can then land inside a write(2) and leave a torn record.
    return bytes([j % 256]) * (j * 7919 % 300_000)


def _run_and_kill(root: Path, *, min_lines: int, max_s: float, rng: random.Random) -> list[int]:
    """Run the writer until it reported ``min_lines`` synced batches (or ``max_s``), then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    printed: list[int] = []
    deadline = time.monotonic() + max_s
    while len(printed) < min_lines and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        printed.append(int(line))
    time.sleep(rng.random() * 0.01)  # land the kill at varied points of a save
    proc.kill()
    out, err = proc.communicate()
    printed += [int(x) for x in out.split()]  # reported before the kill, still in the pipe
    assert printed, f"the writer reported nothing: {err}"
    return printed


def test_every_reported_index_survives_kill_minus_9(tmp_path: Path) -> None:
    """Acknowledged means durable: the child prints an index only after save() (fsync) returned;
    after SIGKILL mid-write and a reopen, every printed index is there, byte for byte."""
    rng = random.Random(1)
    reached = 0
    for round_ in range(3):
        printed = _run_and_kill(tmp_path, min_lines=30, max_s=5.0, rng=rng)
        assert printed[0] > reached  # it resumed after what survived
        with DiskStorage(tmp_path, node_id="n1", segment_bytes=1024 * 1024) as s:
            entries = s.load().persisted.entries
        assert [e.index for e in entries] == list(range(1, len(entries) + 1))
        assert len(entries) >= max(printed), f"round {round_}: lost acknowledged entries"
        for e in entries:
            assert e.data == _expected_data(e.index)
        reached = len(entries)
