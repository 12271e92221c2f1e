"""The state store (issue 14): the replicated state in an SQLite file, durable with the applied
index it covers, replayed from the log only after it, copied whole to a lagging follower.

The decisive property is that nothing is applied twice: increments are not idempotent, so a
counter that equals the number of increments proves every entry was applied exactly once across
restarts, checkpoints, compactions and installs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgpack
import pytest
from test_driver_random import THREE, NullTransport

from raftstate.node.driver import DriverSettings, RaftDriver
from raftstate.node.errors import Refusal
from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.state.tables import StateTables
from raftstate.node.storage.errors import StorageCorruption
from raftstate.node.storage.state_file import StateFile, StoreDescriptor
from raftstate.node.storage.store import DiskStorage
from raftstate.raft import AppendEntries, Entry, InstallSnapshot, SnapshotMeta

T0 = 1_700_000_000_000


def _incr(i: int) -> Entry:
    return Entry(i, 1, T0 + i, data=encode_command("incr", key="counter", by=1))


def _mixed(i: int) -> Entry:
    """Entry i: an increment of 'counter' plus a marker key of its own, every third with a ttl."""
    if i % 2:
        return _incr(i)
    ttl = {"ttl_ms": 60_000} if i % 3 == 0 else {}
    return Entry(
        i, 1, T0 + i, data=encode_command("set", key=f"evt:{i * 7919 % 1000:04d}:{i}", value={"i": i}, **ttl)
    )


def _expected(n: int) -> KVStateMachine:
    sm = KVStateMachine()
    for i in range(1, n + 1):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    return sm


# --------------------------------------------------------------------------- the store alone


def test_a_reopened_store_holds_exactly_what_was_flushed(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    for i in range(1, 101):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    for i in range(101, 121):  # applied, never flushed: lost with the process
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.tables.conn.close()  # no commit: what a kill -9 leaves
    again = KVStateMachine(StateTables(sf.connect()))
    assert again.applied_index == 100
    assert again.snapshot() == _expected(100).snapshot()
    assert len(again.keys) == len(_expected(100).keys)


def test_locks_and_sessions_survive_a_reopen_with_their_outcomes(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    sm.apply(1, T0, encode_command("session_open", idle_timeout_ms=60_000, max_results=10))
    sm.apply(2, T0, encode_command("lock_acquire", name="L", owner="w1", ttl_ms=60_000))
    sm.apply(3, T0, encode_command("incr", key="n", by=5, session=1, seq=1))
    sm.apply(4, T0, encode_command("lock_acquire", name="gone", owner="w2", ttl_ms=60_000))
    sm.apply(5, T0, encode_command("lock_release", name="gone", token=4))
    sm.flush()
    before = sm.snapshot()
    sm.tables.conn.close()
    again = KVStateMachine(StateTables(sf.connect()))
    assert again.snapshot() == before
    # The remembered outcome answers a retry: the increment is not applied a second time.
    assert again.apply(6, T0, encode_command("incr", key="n", by=5, session=1, seq=1)) == {
        "value": 5,
        "version": 3,
        "expires_at": None,
    }
    assert again.lock("L", T0) is not None and again.lock("gone", T0) is None


def test_a_copy_is_consistent_and_installs_in_place(tmp_path: Path) -> None:
    leader = StateFile(tmp_path / "a")
    sm = KVStateMachine(StateTables(leader.connect()))
    for i in range(1, 301):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    for i in range(301, 311):  # not committed yet: not in the copy
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    follower = StateFile(tmp_path / "b")
    copy, index = leader.copy_to(follower.directory)
    assert index == 300 and follower.check_copy(copy) == 300
    old = KVStateMachine(StateTables(follower.connect()))
    old.apply(1, T0, encode_command("set", key="stale", value=1))
    old.flush()
    old.tables.conn.close()
    follower.replace_with(copy)
    follower.sync_dir()
    installed = KVStateMachine(StateTables(follower.connect()))
    assert installed.snapshot() == _expected(300).snapshot()
    assert installed.get("stale") is None


def test_checkpoint_says_which_applied_index_is_durable(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    for i in range(1, 51):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    assert sf.checkpoint() == 50
    assert Path(f"{sf.path}-wal").stat().st_size >= 0


def test_a_file_that_is_not_a_store_refuses_to_open_naming_it(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sf.path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageCorruption) as err:
        sf.connect()
    assert str(sf.path) in str(err.value) and "not an SQLite database" in str(err.value)


def test_a_truncated_store_refuses_to_open(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    for i in range(1, 2001):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    sm.tables.conn.close()  # the last connection: checkpointed into the file
    data = sf.path.read_bytes()
    assert len(data) > 8192
    sf.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageCorruption) as err:
        sf.connect()
    assert "truncated" in str(err.value) and str(sf.path) in str(err.value)


def test_a_store_failure_is_not_an_outcome(tmp_path: Path) -> None:
    """A failing store (disk full, I/O error) must stop the node, never become a refusal that only
    this replica records."""
    sm = KVStateMachine(StateTables(StateFile(tmp_path / "s").connect()))
    sm.tables.conn.close()
    with pytest.raises(sqlite3.Error):
        sm.apply(1, T0, encode_command("set", key="k", value=1))


def test_listing_pages_across_many_rows_and_skips_expired_ones() -> None:
    sm = KVStateMachine()
    for i in range(1, 1001):
        ttl = {"ttl_ms": 10} if i % 2 else {}
        sm.apply(i, T0, encode_command("set", key=f"p:{i:05d}", value=i, **ttl))
    sm.apply(1001, T0, encode_command("set", key="q", value=0))
    seen: list[str] = []
    after = None
    while True:
        page, after = sm.list_keys("p:", after, 100, T0 + 100)
        seen += page
        if after is None:
            break
    assert seen == [f"p:{i:05d}" for i in range(2, 1001, 2)]
    assert sm.list_keys("", None, 2000, T0)[0][-1] == "q"
    assert sm.list_keys("p:\U0010ffff", None, 10, T0) == ([], None)


def test_a_refused_command_changes_nothing_in_the_store() -> None:
    sm = KVStateMachine()
    sm.apply(1, T0, encode_command("set", key="s", value="text"))
    out = sm.apply(2, T0, encode_command("incr", key="s", by=1))
    assert isinstance(out, Refusal)
    rec = sm.get("s")
    assert rec is not None and (rec.value, rec.version) == ("text", 1)


# --------------------------------------------------------------------------- the driver with a store


def _driver(tmp: Path, threshold: int = 10_000) -> RaftDriver:
    return RaftDriver(
        "n2",
        bootstrap=THREE,
        storage=DiskStorage(tmp / "data", node_id="n2"),
        transport=NullTransport(),
        settings=DriverSettings(tick_ms=60_000, snapshot_threshold=threshold),
        state_file=StateFile(tmp / "data" / "state"),
    )


async def _feed(d: RaftDriver, entries: list[Entry], commit: int) -> None:
    prev = entries[0].index - 1
    d.step(AppendEntries(1, "n1", "n2", prev, 1 if prev else 0, tuple(entries), commit))
    for _ in range(2000):
        if d.sm.applied_index >= commit or d.fatal_error is not None:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"applied {d.sm.applied_index}, wanted {commit}")


async def _stop(d: RaftDriver) -> None:
    await d.stop()
    d.sm.tables.conn.close()
    d.storage.close()


def test_a_restart_replays_only_after_the_store_and_applies_nothing_twice(tmp_path: Path) -> None:
    async def run() -> None:
        d = _driver(tmp_path, threshold=100)
        await d.start()
        await _feed(d, [_mixed(i) for i in range(1, 451)], 450)
        for _ in range(400):  # a checkpoint (every 100 entries) compacts the log behind the store
            if d.snapshot_index >= 100:
                break
            await asyncio.sleep(0.01)
        assert d.snapshot_index >= 100 and d.fatal_error is None
        stored = d.storage.snapshot_data()
        assert stored is not None and StoreDescriptor.decode(stored[1]) is not None
        await _stop(d)

        again = _driver(tmp_path, threshold=100)
        assert again.sm.applied_index == 450  # the store, not the snapshot, says where apply is
        await again.start()
        # The leader re-sends the tail after the restart (its commit is known again): skipped.
        await _feed(again, [_mixed(i) for i in range(400, 461)], 460)
        assert again.fatal_error is None
        assert again.sm.snapshot() == _expected(460).snapshot()
        await _stop(again)

    asyncio.run(run())


def test_a_store_behind_its_snapshot_refuses_to_start_naming_it(tmp_path: Path) -> None:
    async def run() -> None:
        d = _driver(tmp_path, threshold=50)
        await d.start()
        await _feed(d, [_incr(i) for i in range(1, 201)], 200)
        for _ in range(400):
            if d.snapshot_index >= 50:
                break
            await asyncio.sleep(0.01)
        await _stop(d)

    asyncio.run(run())
    state = tmp_path / "data" / "state" / "state.db"
    for p in state.parent.iterdir():
        p.unlink()
    with pytest.raises(StorageCorruption) as err:
        _driver(tmp_path)
    assert str(state) in str(err.value) and "behind the snapshot" in str(err.value)


def test_a_follower_installs_a_received_store_and_skips_what_it_holds(tmp_path: Path) -> None:
    leader = StateFile(tmp_path / "leader")
    lsm = KVStateMachine(StateTables(leader.connect()))
    for i in range(1, 301):
        e = _mixed(i)
        lsm.apply(e.index, e.time_ms, e.data)
    lsm.flush()

    async def run() -> None:
        d = _driver(tmp_path / "f")
        await d.start()
        await _feed(d, [_mixed(i) for i in range(1, 11)], 10)  # an old, short history
        assert d.state_file is not None
        copy, index = await asyncio.to_thread(leader.copy_to, d.state_file.directory)
        assert index == 300
        # The snapshot's index (250) is older than the copy (300), as when the leader's store
        # moved on after its last checkpoint: entries 251..300 must be skipped, not re-applied.
        meta = SnapshotMeta(250, 1, THREE, T0 + 250)
        d.receive_store(InstallSnapshot(1, "n1", "n2", meta, StoreDescriptor(index).encode()), copy)
        for _ in range(500):
            if d.snapshot_index == 250:
                break
            await asyncio.sleep(0.01)
        assert d.snapshot_index == 250 and d.sm.applied_index == 300 and d.fatal_error is None
        await _feed(d, [_mixed(i) for i in range(251, 321)], 320)
        assert d.sm.snapshot() == _expected(320).snapshot()
        stored = d.storage.snapshot_data()
        assert stored is not None and StoreDescriptor.decode(stored[1]) == StoreDescriptor(300)
        assert not list(d.state_file.directory.glob("incoming-*"))
        await _stop(d)

    asyncio.run(run())


def test_an_old_whole_state_snapshot_is_imported_into_a_new_store(tmp_path: Path) -> None:
    """A data dir from before the store (or a restored backup) holds the state in its snapshot."""
    storage = DiskStorage(tmp_path / "data", node_id="n2")
    storage.load()
    blob = _expected(40).snapshot()
    storage.save(None, [_mixed(i) for i in range(1, 41)], None)
    storage.save_snapshot(SnapshotMeta(40, 1, THREE, T0 + 40), blob)
    storage.close()
    d = _driver(tmp_path)
    assert d.sm.applied_index == 40 and d.sm.snapshot() == blob
    assert msgpack.unpackb(blob)["format"] == 2
    d.sm.tables.conn.close()
    d.storage.close()


def test_a_store_ahead_of_its_log_refuses_to_start(tmp_path: Path) -> None:
    """The log lost entries the store had applied (storage that acknowledged before fsync): the
    new entries a leader writes at those indexes would be skipped, so the node must not start."""
    sf = StateFile(tmp_path / "data" / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    for i in range(1, 51):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    sm.tables.conn.close()
    with pytest.raises(StorageCorruption) as err:
        _driver(tmp_path)
    assert "beyond the log's last entry 0" in str(err.value) and str(sf.path) in str(err.value)


def test_a_store_installed_ahead_of_the_log_restarts(tmp_path: Path) -> None:
    """After installing a copy newer than the snapshot's index, the store is legitimately ahead of
    the log (it records the index it was installed at): a restart then is fine."""
    leader = StateFile(tmp_path / "leader")
    lsm = KVStateMachine(StateTables(leader.connect()))
    for i in range(1, 301):
        e = _mixed(i)
        lsm.apply(e.index, e.time_ms, e.data)
    lsm.flush()

    async def run() -> None:
        d = _driver(tmp_path / "f")
        await d.start()
        assert d.state_file is not None
        copy, index = await asyncio.to_thread(leader.copy_to, d.state_file.directory)
        meta = SnapshotMeta(250, 1, THREE, T0)
        d.receive_store(InstallSnapshot(1, "n1", "n2", meta, StoreDescriptor(index).encode()), copy)
        for _ in range(500):
            if d.snapshot_index == 250:
                break
            await asyncio.sleep(0.01)
        await _stop(d)

    asyncio.run(run())
    again = _driver(tmp_path / "f")
    assert again.sm.applied_index == 300 and again.sm.snapshot() == _expected(300).snapshot()
    again.sm.tables.conn.close()
    again.storage.close()


def test_a_full_disk_stops_the_node_and_a_restart_resumes_from_the_last_commit(tmp_path: Path) -> None:
    """SQLITE_FULL (a full disk, simulated with max_page_count) during apply is not an outcome: the
    node stops (the fatal path: exit code 4), nothing half-applied is committed, and a restart
    replays the log from the store's last commit to the same state as a replica that never failed."""

    async def run() -> None:
        d = _driver(tmp_path)
        await d.start()
        await _feed(d, [_mixed(i) for i in range(1, 41)], 40)
        pages = d.sm.tables.conn.execute("PRAGMA page_count").fetchone()[0]
        d.sm.tables.conn.execute(f"PRAGMA max_page_count={pages}")
        stopped: list[BaseException] = []
        d.fatal_listeners.append(stopped.append)
        entries = [
            Entry(i, 1, T0 + i, data=encode_command("set", key=f"big{i}", value="x" * 3000))
            for i in range(41, 201)
        ]
        d.step(AppendEntries(1, "n1", "n2", 40, 1, tuple(entries), 200))
        for _ in range(500):
            if stopped:
                break
            await asyncio.sleep(0.01)
        assert stopped and isinstance(stopped[0], sqlite3.Error) and "full" in str(stopped[0])
        assert d.fatal_error is stopped[0]
        await d.stop()
        d.sm.tables.conn.close()
        d.storage.close()

        again = _driver(tmp_path)
        committed = again.sm.applied_index
        assert 40 <= committed < 200
        await again.start()
        await _feed(again, entries[committed - 40 :] or entries[-1:], 200)
        want = _expected(40)
        for e in entries:
            want.apply(e.index, e.time_ms, e.data)
        assert again.sm.snapshot() == want.snapshot()
        await _stop(again)

    asyncio.run(run())


def test_the_wal_stays_bounded_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    """With commits going on while a checkpoint runs (apply on the loop, the checkpoint in a
    thread), a PASSIVE checkpoint never finds the WAL fully copied when a transaction begins, so
    the WAL is never reused and grows without bound (1.3 GB at 150k keys, measured). The RESTART
    pass, run between two apply transactions (the driver holds its apply lock), starts it over."""
    import threading

    sf = StateFile(tmp_path / "state", wal_keep_bytes=1 << 20)
    sm = KVStateMachine(StateTables(sf.connect()))
    apply_lock = threading.Lock()  # the driver's apply lock, in threads
    stop = threading.Event()
    restarted: list[bool] = []

    def checkpoints() -> None:
        while not stop.wait(0.05):
            sf.checkpoint()
            with apply_lock:
                restarted.append(sf.restart_wal())

    worker = threading.Thread(target=checkpoints)
    worker.start()
    try:
        for start in range(1, 30_001, 50):
            with apply_lock:
                for index in range(start, start + 50):
                    sm.apply(index, T0, encode_command("set", key=f"k{index * 7919 % 5_003}", value="v" * 80))
                sm.flush()
    finally:
        stop.set()
        worker.join()
    assert any(restarted), restarted
    wal = Path(f"{sf.path}-wal").stat().st_size
    # 30,000 writes dirtied pages by the dozen per commit: ~120 MB of WAL if it is never reset
    # (measured with the PASSIVE pass alone); reset, it is cut back to 1 MiB each time (how much
    # grows between two resets depends on timing: 50 MB seen).
    assert wal < 80 << 20, (wal, restarted)  # measured 50 MB on a quiet box, 117 MB without resets


def test_a_long_reader_holds_back_the_wal_restart_but_not_durability(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "state")
    sm = KVStateMachine(StateTables(sf.connect()))
    for i in range(1, 101):
        e = _mixed(i)
        sm.apply(e.index, e.time_ms, e.data)
    sm.flush()
    conn, close = sf.reader()
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM kv").fetchone()
    assert sf.checkpoint() == 100  # PASSIVE copies what the reader does not need
    assert not sf.restart_wal()  # RESTART would wait for the reader: skipped
    close()
    close()  # idempotent
    assert sf.checkpoint() == 100 and sf.restart_wal()
