"""The watch client against a real 3-node cluster (node/ops/local_cluster.py): real processes and
sockets, kill -9 and SIGSTOP of the node a watch polls. Checked end to end:

- a watch on a follower yields every acknowledged write under its prefix, in order, at the revision
  its answer named (version = revision), and nothing else;
- the node a watch polls is kill -9'ed, or SIGSTOPped, mid-stream: it carries on on another node
  with no gap and no duplicate;
- lock() and once() waiters are woken by the release event (the safety poll is made too slow to
  be what wakes them);
- ``relist=True`` after the history is pruned: a Snapshot with the current values, then events;
- ``raftstate watch`` as a real process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from raftstate.client import AsyncClient, Compacted, Event, Snapshot, Watch, _waiter
from raftstate.node.ops.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("watch-cluster"),
        settings={"watch_history_events": 300, "watch_max_events": 100},
    )
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


@pytest.fixture
def healthy(cluster: LocalCluster) -> LocalCluster:
    """Every node running and answering (restart what a previous test killed), a leader elected."""
    for nid in cluster.ids:
        if not cluster.alive(nid):
            cluster.start(nid)
    for nid in cluster.ids:
        wait_until(lambda n=nid: cluster.status(n), 30, f"node {nid} to answer")  # type: ignore[misc]
    cluster.wait_leader()
    return cluster


def endpoints(c: LocalCluster) -> list[str]:
    return [f"http://{c.addr[n]}" for n in c.ids]


def follower(c: LocalCluster) -> str:
    leader = c.wait_leader()
    return next(n for n in c.ids if n != leader)


async def collect(w: Watch, want: set[int], timeout: float = 60.0) -> list[Event]:
    """Events until every revision in ``want`` has been seen."""
    out: list[Event] = []
    async with asyncio.timeout(timeout):
        async for item in w:
            assert isinstance(item, Event)
            out.append(item)
            if want <= {e.revision for e in out}:
                return out
    return out


async def test_a_watch_on_a_follower_yields_every_acknowledged_write_in_order(healthy: LocalCluster) -> None:
    c = healthy
    node = f"http://{c.addr[follower(c)]}"
    async with AsyncClient(endpoints(c)) as state:
        async with state.watch("wf:", node=node) as w:
            start = await w.started()
            await state.set("other:1", 1)  # not under the prefix
            written = {await state.set(f"wf:{i % 5}", i): i for i in range(40)}
            got = await collect(w, set(written))
            assert w.nodes_used[0] == node
    assert [e.revision for e in got] == sorted(written) and min(written) > start
    assert all(e.type == "put" and e.value == written[e.revision] and e.version == e.revision for e in got)


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_the_polled_node_dies_or_stops_and_the_watch_resumes_elsewhere(
    healthy: LocalCluster, fault: str
) -> None:
    c = healthy
    victim = follower(c)
    node = f"http://{c.addr[victim]}"
    async with AsyncClient(endpoints(c), timeout=20) as state:
        w = Watch(state, f"wk{fault}:", None, node=node, poll_s=1.0)
        async with w:
            await w.started()
            written: dict[int, int] = {}
            for i in range(150):
                written[await state.set(f"wk{fault}:{i % 7}", i)] = i
                if i == 50:
                    await asyncio.sleep(0.3)
                    if fault == "kill":
                        c.kill(victim)
                    else:
                        c.kill(victim, signal.SIGSTOP)
            try:
                got = await collect(w, set(written))
            finally:
                if fault == "pause":
                    c.kill(victim, signal.SIGCONT)
    revs = [e.revision for e in got]
    assert revs == sorted(written), "a gap, a duplicate or a reordering across the failover"
    assert [e.value for e in got] == [written[r] for r in revs]
    # The events after the fault came from another node (the victim may not have answered any poll
    # before it: a node restarted by the previous test can still be catching up).
    assert w.nodes_used and w.nodes_used[-1] != node, (node, w.nodes_used)


async def test_lock_and_once_waiters_are_woken_by_the_event_not_by_the_poll(
    healthy: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_waiter, "SAFETY_POLL_S", 60.0)  # only the event can wake them in time
    c = healthy
    async with AsyncClient(endpoints(c), owner="a") as a, AsyncClient(endpoints(c), owner="b") as b:
        held = await a.lock("wl-lock", ttl=30).__aenter__()
        waiting = asyncio.ensure_future(b.lock("wl-lock", ttl=30).__aenter__())
        await asyncio.sleep(2.0)  # b was refused and is waiting on its watch
        assert not waiting.done()
        await held.release()
        lock_b = await asyncio.wait_for(waiting, 20)  # liveness bound, far below the 60 s poll
        assert lock_b.token > held.token
        await lock_b.release()

        gate = asyncio.Event()

        async def first() -> bool:
            async with a.once("wl-once", ttl=60, claim_ttl=30) as first_time:
                await gate.wait()
                return first_time

        t1 = asyncio.ensure_future(first())
        await asyncio.sleep(0.5)
        t2 = asyncio.ensure_future(b.once("wl-once", ttl=60, claim_ttl=30).__aenter__())
        await asyncio.sleep(2.0)
        assert not t2.done()
        gate.set()
        assert await t1 is True
        assert await asyncio.wait_for(t2, 20) is False  # woken by the put of "done"


async def test_relist_after_the_history_is_pruned_gives_a_snapshot_then_events(healthy: LocalCluster) -> None:
    c = healthy
    async with AsyncClient(endpoints(c)) as state:
        first = await state.set("wr:a", "a0")
        for i in range(400):  # settings.watch_history_events is 300 in this cluster
            await state.set(f"wr:{'abc'[i % 3]}", i)
        await state.delete("wr:c")
        await asyncio.sleep(3.0)  # the pruning task runs every second
        with pytest.raises(Compacted) as err:
            async with state.watch("wr:", first) as w:
                await w.__anext__()
        assert err.value.oldest is not None and err.value.oldest > first
        async with state.watch("wr:", first, relist=True) as w:
            snap = await asyncio.wait_for(w.__anext__(), 30)
            assert isinstance(snap, Snapshot)
            assert {k: e.value for k, e in snap.items.items()} == {"wr:a": 399, "wr:b": 397}
            rev = await state.set("wr:d", "new")
            ev = await asyncio.wait_for(w.__anext__(), 30)
            assert isinstance(ev, Event) and (ev.key, ev.revision, ev.value) == ("wr:d", rev, "new")


def test_the_cli_prints_history_then_stops_after_count(healthy: LocalCluster) -> None:
    c = healthy
    eps = ",".join(endpoints(c))
    versions = [c.put(f"wc:{i}", {"n": i})["version"] for i in range(3)]
    cmd = ["watch", "wc:", "--from", str(versions[0]), "--count", "3", "--json", "--endpoints", eps]
    out = subprocess.run(
        [sys.executable, "-m", "raftstate.client.cli", *cmd], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(d["key"], d["revision"], d["value"]) for d in docs] == [
        (f"wc:{i}", versions[i], {"n": i}) for i in range(3)
    ]
