"""The small durable files of a node: hard state, snapshots, and the data dir (layout, lock, meta)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raftstate.node.storage.data_dir import DataDir, atomic_write
from raftstate.node.storage.errors import DataDirLocked, DataDirMismatch, StorageCorruption
from raftstate.node.storage.hard_state import HardStateFile
from raftstate.node.storage.snapshot_store import SnapshotStore, snapshot_name
from raftstate.raft.messages import HardState, Membership, SnapshotMeta


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, Membership(frozenset({"a", "b", "c"})), time_ms=index * 10)


# --------------------------------------------------------------------------- hard state


def test_hard_state_round_trip_and_absence(tmp_path: Path) -> None:
    f = HardStateFile(tmp_path / "hard_state")
    assert f.load() is None  # a node that never voted
    f.save(HardState(term=7, vote="n2", commit=41))
    assert HardStateFile(tmp_path / "hard_state").load() == HardState(7, "n2", 41)
    f.save(HardState(term=8, vote=None, commit=41))
    assert f.load() == HardState(8, None, 41)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "magic"])
def test_a_corrupt_hard_state_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    """It is replaced atomically, so a bad file is damage, never a half-finished write."""
    path = tmp_path / "hard_state"
    HardStateFile(path).save(HardState(term=3, vote="n1", commit=2))
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-1] ^= 0x10
    elif damage == "truncate":
        del raw[-2:]
    elif damage == "empty":
        raw.clear()
    else:
        raw[0:4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruption) as exc:
        HardStateFile(path).load()
    assert exc.value.path == path and str(path) in str(exc.value)


def test_a_leftover_hard_state_temp_file_is_ignored(tmp_path: Path) -> None:
    """A crash between writing the temp file and the rename: the old file is still the truth."""
    path = tmp_path / "hard_state"
    HardStateFile(path).save(HardState(term=3, vote="n1"))
    (tmp_path / "hard_state.tmp").write_bytes(b"half a hard st")
    assert HardStateFile(path).load() == HardState(term=3, vote="n1")
    assert not (tmp_path / "hard_state.tmp").exists()


def test_atomic_write_reports_every_fsync(tmp_path: Path) -> None:
    seen: list[float] = []
    atomic_write(tmp_path / "f", [b"a", b"b"], seen.append)
    assert (tmp_path / "f").read_bytes() == b"ab"
    assert len(seen) == 2 and all(s >= 0 for s in seen)  # the file, then its directory


# --------------------------------------------------------------------------- snapshots


def test_snapshot_round_trip_name_and_retention(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for i, term in ((10, 1), (20, 2), (30, 2)):
        store.write(meta(i, term), f"state@{i}".encode())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [snapshot_name(20, 2), snapshot_name(30, 2)]  # the newest two
    assert names[1] == "snap-00000000000000000030-2.snap"
    refs = store.list()
    assert [(r.index, r.term) for r in refs] == [(30, 2), (20, 2)]
    assert store.read(refs[0]) == (meta(30, 2), b"state@30")


def test_a_leftover_snapshot_temp_file_is_cleaned(tmp_path: Path) -> None:
    """A crash mid-write leaves only ``.tmp``: never listed, deleted when the store opens."""
    SnapshotStore(tmp_path).write(meta(10), b"ten")
    (tmp_path / (snapshot_name(20, 1) + ".tmp")).write_bytes(b"RAFTSNAP half")
    store = SnapshotStore(tmp_path)
    assert [r.index for r in store.list()] == [10]
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_name(10, 1)]


@pytest.mark.parametrize("where", [0, 12, 40, -1, -5])
def test_a_damaged_snapshot_fails_validation(tmp_path: Path, where: int) -> None:
    store = SnapshotStore(tmp_path)
    ref = store.write(meta(10), b"x" * 100)
    raw = bytearray(ref.path.read_bytes())
    raw[where] ^= 0x40
    ref.path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruption) as exc:
        store.read(ref)
    assert exc.value.path == ref.path


def test_a_snapshot_whose_name_disagrees_with_its_content_fails(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    ref = store.write(meta(10), b"x")
    ref.path.rename(tmp_path / snapshot_name(11, 1))
    with pytest.raises(StorageCorruption, match="file name says index 11"):
        store.read(store.list()[0])


# --------------------------------------------------------------------------- data dir


def test_layout_and_meta_at_first_start(tmp_path: Path) -> None:
    root = tmp_path / "n1"
    d = DataDir.open(root, node_id="n1")
    assert sorted(p.name for p in root.iterdir()) == ["LOCK", "log", "meta", "snapshots"]
    assert json.loads((root / "meta").read_text()) == {"format": 1, "node_id": "n1", "cluster_id": None}
    assert (root / "LOCK").read_text().strip() == str(os.getpid())
    d.close()
    DataDir.open(root, node_id="n1", cluster_id="c1").close()  # adopts the cluster id once known
    assert json.loads((root / "meta").read_text())["cluster_id"] == "c1"


def test_a_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    d = DataDir.open(tmp_path, node_id="n1")
    with pytest.raises(DataDirLocked) as exc:
        DataDir.open(tmp_path, node_id="n1")
    assert exc.value.pid == os.getpid() and str(tmp_path) in str(exc.value)
    d.close()
    DataDir.open(tmp_path, node_id="n1").close()  # free again once closed


def test_a_data_dir_locked_by_another_process_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from raftstate.node.storage.data_dir import DataDir\n"
            "d = DataDir.open(sys.argv[1], node_id='n1')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(DataDirLocked) as exc:
            DataDir.open(tmp_path, node_id="n1")
        assert exc.value.pid == holder.pid
        assert f"process {holder.pid}" in str(exc.value) and str(tmp_path) in str(exc.value)
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock with the process
        holder.wait()
    DataDir.open(tmp_path, node_id="n1").close()


def test_a_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    DataDir.open(tmp_path, node_id="n1", cluster_id="c1").close()
    with pytest.raises(DataDirMismatch, match=r"belongs to node id 'n1'.*started as node id 'n2'"):
        DataDir.open(tmp_path, node_id="n2")
    with pytest.raises(DataDirMismatch, match="cluster id"):
        DataDir.open(tmp_path, node_id="n1", cluster_id="c2")
    DataDir.open(tmp_path, node_id="n1").close()  # the lock was released by the refused opens


def test_raft_data_without_meta_is_refused(tmp_path: Path) -> None:
    DataDir.open(tmp_path, node_id="n1").close()
    HardStateFile(tmp_path / "hard_state").save(HardState(term=1))
    (tmp_path / "meta").unlink()
    with pytest.raises(StorageCorruption, match="missing, but the directory holds raft data"):
        DataDir.open(tmp_path, node_id="n2")
