"""Client: the blocking API, driven through a private event loop by the same AsyncClient code;
thread-safe (many threads share one Client, its session and its connection pool)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fake_cluster import FakeCluster
from raftstate.client import ClientClosed, LockLost, SyncLock
from raftstate.client.sync_client import Client


def client(fc: FakeCluster, **kw: object) -> Client:
    return Client(fc.endpoints, transport=fc.transport(), rng=random.Random(1), **kw)


def test_blocking_api_round_trip() -> None:
    fc = FakeCluster()
    fc.leader = "n2"
    with client(fc) as state:
        v = state.set("imports:1:progress", {"processed": 1}, ttl=60)
        assert state.get("imports:1:progress") == {"processed": 1}
        entry = state.get_entry("imports:1:progress")
        assert entry is not None and entry.version == v
        assert state.compare_and_set("imports:1:progress", {"processed": 2}, version=v)
        assert state.set_if_absent("x", 1) and not state.set_if_absent("x", 2)
        assert state.increment("n", 10) == 10
        assert list(state.keys("imports:")) == ["imports:1:progress"]
        assert list(state.keys(page_size=1, limit=2)) == ["imports:1:progress", "n"]
        assert state.delete("x") and not state.delete("x")
        assert state.get("missing", default="d") == "d"
        assert state.leader == fc.endpoints[1]
    with pytest.raises(ClientClosed):
        state.get("a")


def test_many_threads_share_one_client_and_count_exactly() -> None:
    fc = FakeCluster()
    fc.fault("apply_then_lose", path="/increment", times=20)
    with client(fc) as state:

        def work(_: int) -> list[int]:
            return [state.increment("n") for _ in range(100)]

        with ThreadPoolExecutor(8) as pool:
            results = [v for vs in pool.map(work, range(8)) for v in vs]
    assert sorted(results) == list(range(1, 801))
    assert fc.kv["n"].value == 800
    assert max(fc.applied.values()) == 1


def test_sync_lock_is_renewed_by_the_loop_thread_and_fences() -> None:
    fc = FakeCluster()
    with client(fc) as state:
        with state.lock("job", ttl=0.6) as lock:
            assert isinstance(lock, SyncLock) and lock.token > 0
            assert lock.wait_lost(timeout=1.0) is False  # renewed meanwhile
            state.set("k", 1, fence=lock)
        assert state.lock_info("job") is None
        with pytest.raises(LockLost), state.lock("job", ttl=0.6) as lock:
            fc.locks.clear()  # the lease vanished on the cluster
            assert lock.wait_lost(timeout=1.0) is True
            with pytest.raises(LockLost):
                state.set("k", 2, fence=lock)


def test_sync_once() -> None:
    fc = FakeCluster()
    with client(fc) as state:
        with state.once("evt", ttl=60) as first:
            assert first
        with state.once("evt", ttl=60) as first:
            assert not first


def test_close_stops_the_loop_thread() -> None:
    fc = FakeCluster()
    before = threading.active_count()
    state = client(fc)
    state.set("a", 1)
    state.close()
    state.close()  # idempotent
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
