"""DiskStorage writes a local snapshot file WITHOUT its mutex (issue 7: at 1M keys the ~116 MB
write + fsync under the mutex stopped log appends, hence commits, for seconds on every node at
once). A gate inside the file write holds the snapshot write "slow" for as long as a test needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import raftstate.node.storage.data_dir as data_dir
from raftstate.node.storage.errors import StorageIOError
from raftstate.node.storage.store import DiskStorage
from raftstate.raft.messages import Entry, Membership, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))
BIG = 1 << 20  # snapshot data size; the gate stops only writes this large (not log or hard state)
WAIT_S = 10.0  # generous: the machine is shared


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, time_ms=i, data=b"x" * 30) for i in range(lo, hi + 1)]


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERS, time_ms=index)


class SlowSnapshotWrite:
    """Patches data_dir.write_all: a chunk of >= BIG bytes waits for :meth:`release` (or fails)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        self._fail = fail
        real = data_dir.write_all

        def gated(fd: int, data: bytes | bytearray | memoryview) -> None:
            if len(data) >= BIG:
                self.entered.set()
                assert self._release.wait(WAIT_S), "the test never released the snapshot write"
                if self._fail:
                    raise OSError(28, "No space left on device (injected)")
            real(fd, data)

        monkeypatch.setattr(data_dir, "write_all", gated)

    def release(self) -> None:
        self._release.set()


class Background:
    """Runs a call in a thread and keeps its outcome."""

    def __init__(self, fn: object, *args: object) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: object, args: tuple[object, ...]) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = WAIT_S) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[DiskStorage]:
    s = DiskStorage(tmp_path, node_id="n1", segment_bytes=400)
    s.load()
    s.save(None, ents(1, 100), None)
    s.save_snapshot(meta(20), b"s" * 100)  # an older snapshot, so snapshot_data has one to read
    yield s
    s.close()


def test_log_appends_and_snapshot_reads_go_on_while_a_snapshot_is_written(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = SlowSnapshotWrite(monkeypatch)
    snap = Background(storage.save_snapshot, meta(80), b"d" * BIG)
    try:
        assert gate.entered.wait(WAIT_S)
        # With the mutex held across the write (the old code), neither of these could finish.
        append = Background(storage.save, None, ents(101, 150), None)
        assert append.join(), "a log append waited for the snapshot write"
        assert append.error is None
        stored = storage.snapshot_data()
        assert stored is not None and stored[0].index == 20  # not yet published: the old one
    finally:
        gate.release()
    assert snap.join() and snap.error is None
    stored = storage.snapshot_data()
    assert stored is not None and stored[0].index == 80 and len(stored[1]) == BIG
    storage.close()
    reopened = DiskStorage(tmp_path, node_id="n1")
    loaded = reopened.load()
    assert loaded.persisted.snapshot == meta(80)
    assert [e.index for e in loaded.persisted.entries] == list(range(81, 151))
    assert not list((tmp_path / "snapshots").glob("*.tmp"))
    reopened.close()


def test_a_snapshot_installed_during_the_write_wins_and_the_staged_file_is_dropped(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = SlowSnapshotWrite(monkeypatch)
    snap = Background(storage.save_snapshot, meta(80), b"d" * BIG)
    try:
        assert gate.entered.wait(WAIT_S)
        # The leader's snapshot (beyond our commit index) arrives meanwhile, with entries after it.
        storage.save(None, ents(201, 205, term=2), SnapshotToInstall(meta(200, 2), b"leader"))
    finally:
        gate.release()
    assert snap.join() and snap.error is None
    stored = storage.snapshot_data()
    assert stored == (meta(200, 2), b"leader")
    assert not list((tmp_path / "snapshots").glob("*.tmp"))
    storage.close()
    reopened = DiskStorage(tmp_path, node_id="n1")
    loaded = reopened.load()
    assert loaded.persisted.snapshot == meta(200, 2)
    assert [e.index for e in loaded.persisted.entries] == list(range(201, 206))
    reopened.close()


def test_a_failed_snapshot_write_stops_the_storage_and_leaves_no_named_file(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = SlowSnapshotWrite(monkeypatch, fail=True)
    gate.release()
    with pytest.raises(StorageIOError, match="No space left on device"):
        storage.save_snapshot(meta(80), b"d" * BIG)
    with pytest.raises(StorageIOError, match="restart the process"):
        storage.save(None, ents(101, 101), None)
    storage.close()
    assert [p.name for p in (tmp_path / "snapshots").glob("*.snap")] == ["snap-00000000000000000020-1.snap"]
    reopened = DiskStorage(tmp_path, node_id="n1")  # recovery removes the partial temp file
    loaded = reopened.load()
    assert loaded.persisted.snapshot == meta(20)
    assert not list((tmp_path / "snapshots").glob("*.tmp"))
    reopened.close()
