"""The client's watch loop (client/watch.py) against a scripted history (tests/fake_cluster.py
``FakeHistory``): order, resume on another node without a gap or a duplicate, progress, compacted
and the re-list, the bounded queue. The real-process tests are in test_watch_client_cluster.py."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from fake_cluster import FakeHistory
from raftstate.client import AsyncClient, Client, Compacted, Event, Progress, Snapshot, Watch


def client(fh: FakeHistory) -> AsyncClient:
    return AsyncClient(fh.endpoints, transport=fh, rng=random.Random(3))  # type: ignore[arg-type]


async def take(w: Watch, n: int, timeout: float = 3.0) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await w.__anext__())
    return out


def revs(items: list[Any]) -> list[int]:
    return [i.revision for i in items if isinstance(i, Event)]


async def test_history_is_replayed_from_start_revision_then_live_changes_follow_in_order() -> None:
    fh = FakeHistory()
    fh.put("a:1", 1)
    fh.other()
    fh.put("a:2", 2)
    async with client(fh) as state, Watch(state, "a:", 1, poll_s=0.3) as w:
        first = await take(w, 2)
        assert [(e.key, e.value, e.revision, e.version) for e in first] == [
            ("a:1", 1, 1, 1),
            ("a:2", 2, 3, 3),
        ]
        fh.delete("a:1")
        (ev,) = await take(w, 1)
        assert (ev.type, ev.key, ev.revision) == ("delete", "a:1", 4)
        assert w.revision == 3  # what the consumer has seen in full: revision 4 may have more events


async def test_without_start_revision_only_later_changes_are_seen() -> None:
    fh = FakeHistory()
    fh.put("a:old", 1)
    async with client(fh) as state, state.watch("a:") as w:
        assert await w.started() == 1
        fh.put("a:new", 2)
        (ev,) = await take(w, 1)
        assert ev.key == "a:new" and ev.revision == 2


async def test_a_lost_answer_or_a_dead_node_resumes_on_another_node_without_gap_or_duplicate() -> None:
    fh = FakeHistory()
    async with client(fh) as state, Watch(state, "j:", 1, node=fh.endpoints[0], poll_s=0.3) as w:
        seen: list[int] = []
        for i in range(30):
            fh.put(f"j:{i % 4}", i)
            if i == 5:
                fh.lose[fh.endpoints[0]] = 1  # the answer is lost on the way back
            if i == 12:
                fh.down.add(w.nodes_used[-1])  # the node it polls dies
            if i == 20:
                fh.down.clear()
                fh.down.add(w.nodes_used[-1])
            seen += revs(await take(w, 1))
        assert seen == list(range(1, 31))
        assert len(set(w.nodes_used)) >= 2, w.nodes_used


async def test_a_lagging_node_answers_up_to_what_it_applied_and_the_rest_follows() -> None:
    fh = FakeHistory()
    follower = fh.endpoints[1]
    for i in range(5):
        fh.put(f"k:{i}", i)
    fh.applied[follower] = 3
    async with client(fh) as state, Watch(state, "k:", 1, node=follower, poll_s=0.2) as w:
        assert revs(await take(w, 3)) == [1, 2, 3]
        fh.applied.pop(follower)  # it catches up
        assert revs(await take(w, 2)) == [4, 5]


async def test_progress_is_yielded_when_nothing_changes_and_the_revision_advances() -> None:
    fh = FakeHistory()
    fh.put("p:1", 1)
    async with client(fh) as state, Watch(state, "p:", 2, progress=True, poll_s=0.1) as w:
        fh.other()
        fh.other()
        items = await take(w, 1)
        assert isinstance(items[0], Progress) and items[0].revision == 3 and w.revision == 3


async def test_compacted_raises_naming_the_oldest_revision() -> None:
    fh = FakeHistory()
    for i in range(5):
        fh.put(f"c:{i}", i)
    fh.compact(4)
    async with client(fh) as state, Watch(state, "c:", 2, poll_s=0.2) as w:
        with pytest.raises(Compacted) as err:
            await take(w, 1)
    assert err.value.oldest == 4 and err.value.revision == 5
    assert "'c:'" in str(err.value) and "relist=True" in str(err.value)


async def test_relist_yields_a_snapshot_then_only_the_changes_after_it() -> None:
    fh = FakeHistory()
    fh.put("r:a", "a1")
    fh.put("r:b", "b1")
    fh.delete("r:b")
    fh.put("r:a", "a2")
    fh.compact(4)
    async with client(fh) as state, Watch(state, "r:", 1, relist=True, poll_s=0.2) as w:
        (snap,) = await take(w, 1)
        assert isinstance(snap, Snapshot) and snap.revision == 4
        assert {k: (e.value, e.version) for k, e in snap.items.items()} == {"r:a": ("a2", 4)}
        fh.put("r:c", "c1")
        (ev,) = await take(w, 1)
        assert (ev.key, ev.revision) == ("r:c", 5)


async def test_relist_drops_replayed_changes_the_listing_already_showed() -> None:
    """The listing is read after its starting revision S: a key written after S is listed with its
    new version, and the replay of that write from S + 1 must not be yielded again."""
    fh = FakeHistory()
    fh.put("r:a", 1)
    async with client(fh) as state:
        w = Watch(state, "r:", None, relist=True, poll_s=0.2)
        real_keys = state.keys

        def keys_then_write(*a: Any, **kw: Any) -> Any:
            fh.put("r:a", 2)  # lands between the start revision (1) and the reads
            fh.put("r:z", 9)
            return real_keys(*a, **kw)

        state.keys = keys_then_write  # type: ignore[method-assign]
        async with w:
            (snap,) = await take(w, 1)
            assert snap.revision == 1 and {k: e.version for k, e in snap.items.items()} == {
                "r:a": 2,
                "r:z": 3,
            }
            fh.delete("r:z")
            (ev,) = await take(w, 1)
            assert (ev.type, ev.key, ev.revision) == ("delete", "r:z", 4)


async def test_a_slow_consumer_stops_the_polling_and_nothing_grows() -> None:
    fh = FakeHistory()
    for i in range(50):
        fh.put(f"s:{i}", i)
    async with client(fh) as state:
        w = Watch(state, "s:", 1, poll_s=0.2, queue_size=5)
        async with w:
            await take(w, 1)
            for i in range(50, 200):
                fh.put(f"s:{i}", i)
                await asyncio.sleep(0)
            await asyncio.sleep(0.3)
            assert w._queue.qsize() <= 5
            polls = len(fh.polls)
            await asyncio.sleep(0.5)
            assert len(fh.polls) == polls  # the pump waits for the consumer: no polling meanwhile
            got = revs(await take(w, 199))
            assert got == list(range(2, 201))


async def test_close_ends_the_iteration_and_the_polling() -> None:
    fh = FakeHistory()
    async with client(fh) as state:
        w = Watch(state, "x:", 1, poll_s=0.2)
        reader = asyncio.create_task(take(w, 1))
        await asyncio.sleep(0.1)
        await w.close()
        with pytest.raises(StopAsyncIteration):
            await reader
        polls = len(fh.polls)
        await asyncio.sleep(0.4)
        assert len(fh.polls) == polls


def test_the_blocking_client_iterates_a_watch() -> None:
    fh = FakeHistory()
    for i in range(3):
        fh.put(f"b:{i}", i)
    with Client(fh.endpoints, transport=fh) as state:
        it = state.watch("b:", 1)
        got = [next(it) for _ in range(3)]
        it.close()  # type: ignore[attr-defined]
    assert [(e.key, e.revision) for e in got] == [("b:0", 1), ("b:1", 2), ("b:2", 3)]


def _cli(argv: list[str], fh: FakeHistory) -> int:
    import argparse

    from raftstate.client.cli import add_client_commands, run_client_command

    parser = argparse.ArgumentParser(prog="raftstate")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    with Client(fh.endpoints, transport=fh) as c:
        return run_client_command(parser.parse_args(argv), c)


def test_cli_watch_prints_events_from_a_revision_as_lines_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    fh = FakeHistory()
    fh.put("imports:42:progress", {"processed": 100})
    fh.put("imports:42:state", "running")
    fh.delete("imports:42:state")
    assert _cli(["watch", "imports:42:", "--from", "1", "--count", "3"], fh) == 0
    assert capsys.readouterr().out.splitlines() == [
        '1 put imports:42:progress {"processed": 100}',
        "2 put imports:42:state running",
        "3 delete imports:42:state",
    ]
    assert _cli(["watch", "imports:", "--from", "2", "--count", "1", "--json"], fh) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"type": "put", "key": "imports:42:state", "revision": 2, "value": "running", "version": 2}


def test_cli_watch_refuses_a_bad_from_and_reports_compacted(capsys: pytest.CaptureFixture[str]) -> None:
    fh = FakeHistory()
    assert _cli(["watch", "a:", "--from", "0"], fh) == 2
    assert "--from must be a revision >= 1" in capsys.readouterr().err
    for i in range(3):
        fh.put(f"a:{i}", i)
    fh.compact(3)
    assert _cli(["watch", "a:", "--from", "1"], fh) == 3
    err = capsys.readouterr().err
    assert "Compacted" in err and "'a:'" in err and "from revision 1" in err


async def test_a_waiter_wakes_on_the_release_of_its_lock_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from raftstate.client._retry import Backoff
    from raftstate.client._waiter import LOCK_GONE, ChangeWaiter

    monkeypatch.setattr("raftstate.client._waiter.SAFETY_POLL_S", 30.0)
    fh = FakeHistory()
    fh.event("lock_acquire", "job", token=1, owner="a")
    async with client(fh) as state:
        waiter = ChangeWaiter(state, "job", LOCK_GONE, Backoff(random.Random(1)))
        await waiter.start()
        assert waiter.watching
        woke = asyncio.ensure_future(waiter.wait(None))
        fh.event("lock_release", "job2", token=2)  # another lock under the same prefix
        fh.event("lock_acquire", "job", token=3, owner="b")  # not a release
        await asyncio.sleep(0.3)
        assert not woke.done()
        fh.event("lock_expire", "job", token=3)
        await asyncio.wait_for(woke, 5)
        await waiter.close()


async def test_a_waiter_polls_as_before_when_the_cluster_has_no_watch() -> None:
    from fake_cluster import FakeCluster
    from raftstate.client._retry import Backoff
    from raftstate.client._waiter import LOCK_GONE, ChangeWaiter

    fc = FakeCluster()
    async with AsyncClient(fc.endpoints, transport=_NoWatch(fc.transport()), rng=random.Random(2)) as state:
        waiter = ChangeWaiter(state, "job", LOCK_GONE, Backoff(random.Random(1), base_s=0.05, cap_s=0.05))
        await waiter.start()
        assert not waiter.watching
        await asyncio.wait_for(waiter.wait(None), 1.0)  # the backoff's 50 ms, not a watch
        await waiter.close()


class _NoWatch:
    """A transport whose nodes have no /v1/watch route (an older version)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def send(self, endpoint: str, request: Any, timeout_s: float) -> Any:
        from raftstate.client import Response
        from raftstate.client import protocol as p

        if request.op == p.WATCH:
            return Response(404, "404: Not Found")
        return await self.inner.send(endpoint, request, timeout_s)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _SwallowsCancel(FakeHistory):
    """A transport that, like asyncio.wait_for on Python < 3.12 when the answer and the cancel
    arrive together, returns the answer instead of raising CancelledError."""

    async def send(self, endpoint: str, request: Any, timeout_s: float) -> Any:
        try:
            return await super().send(endpoint, request, timeout_s)
        except asyncio.CancelledError:
            return await FakeHistory.send(self, endpoint, request, 0.05)


async def test_close_ends_the_pump_even_if_a_cancellation_is_swallowed() -> None:
    """Regression: close() awaited the cancelled pump, which polled on forever (the chaos of a
    real cluster test hung here)."""
    fh = _SwallowsCancel()
    async with client(fh) as state:
        w = Watch(state, "x:", 1, poll_s=0.2)
        await w.started()
        await asyncio.sleep(0.05)  # a poll is parked
        await asyncio.wait_for(w.close(), 3)
        polls = len(fh.polls)
        await asyncio.sleep(0.5)
        assert len(fh.polls) == polls
