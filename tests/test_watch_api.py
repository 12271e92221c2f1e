"""``GET /v1/watch`` and stream op ``watch`` (node/api/watch.py, docs/watch.md) on one real node
in process: a one-voter RaftDriver on MemoryStorage, the real Api, served by aiohttp on 127.0.0.1.
Writes go through the same Api functions the HTTP routes call."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.client import protocol as p
from raftstate.node.api.handlers import Api
from raftstate.node.api.schema import ApiLimits
from raftstate.node.api.stream import StreamApi
from raftstate.node.api.watch import WatchLimits, parse_query
from raftstate.node.config import ConfigError, Settings, load_config
from raftstate.node.driver import DriverSettings, RaftDriver
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.runtime.cluster_time import ClusterTime
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.tables import StateTables
from raftstate.node.storage.store import MemoryStorage
from raftstate.raft import Membership, Message, Role


class _NoPeers:
    def send(self, msg: Message) -> None:
        raise AssertionError("a one-voter cluster sends nothing")

    def update_peers(self, addresses: dict[str, str]) -> None:
        pass


@dataclass
class Node:
    driver: RaftDriver
    api: Api
    server: TestServer
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def put(self, key: str, value: Any, **body: Any) -> int:
        out = await self.api.op_set(key, {"value": value, **body}, {})
        return int(out["version"])

    async def watch(self, **query: Any) -> tuple[int, Any]:
        q = {k: str(v) for k, v in query.items()}
        async with self.http.get(self.url("/v1/watch"), params=q) as resp:
            return resp.status, await resp.json()


LIMITS = WatchLimits(max_events=50, max_wait_s=5, history_events=1000, ring_events=20, max_examined=40)


async def _node(limits: WatchLimits = LIMITS) -> AsyncIterator[Node]:
    driver = RaftDriver(
        "n1",
        bootstrap=Membership(voters=frozenset({"n1"})),
        storage=MemoryStorage(),
        transport=_NoPeers(),
        settings=DriverSettings(tick_ms=10),
    )
    ct = ClusterTime(lambda: int(time.time() * 1000))
    ct.attach(driver)
    metrics = NodeMetrics("n1", "t")
    api = Api(driver, metrics, cluster_time=ct, limits=ApiLimits(), max_request_bytes=1 << 20, watch=limits)
    app = web.Application()
    api.install(app)
    StreamApi(api, metrics, max_frame_bytes=1 << 20, max_in_flight=8).install(app)
    await driver.start()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        node = Node(driver, api, server, http)
        for _ in range(500):
            if driver.raft.role == Role.LEADER and driver.sm.applied_index >= 1:
                break
            await asyncio.sleep(0.01)
        assert driver.raft.role == Role.LEADER
        try:
            yield node
        finally:
            await server.close()
            await driver.stop()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async for n in _node():
        yield n


async def test_without_from_answers_the_current_revision_at_once(node: Node) -> None:
    v = await node.put("a", 1)
    status, body = await node.watch(prefix="a")
    assert status == 200 and body == {"events": [], "revision": node.driver.sm.applied_index}
    assert body["revision"] >= v


async def test_with_from_replays_history_in_order_with_values(node: Node) -> None:
    start = node.driver.sm.applied_index
    v1 = await node.put("job:1", {"state": "running"})
    await node.put("other", 0)
    v2 = await node.put("job:2", "done", ttl=30)
    status, body = await node.watch(prefix="job:", **{"from": start + 1})
    assert status == 200
    assert [(e["type"], e["key"], e["revision"]) for e in body["events"]] == [
        ("put", "job:1", v1),
        ("put", "job:2", v2),
    ]
    assert body["events"][0]["value"] == {"state": "running"} and body["events"][0]["version"] == v1
    assert isinstance(body["events"][1]["expires_at"], int)  # ms of cluster time
    assert body["revision"] == node.driver.sm.applied_index


async def test_a_parked_poll_answers_on_the_first_matching_write(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    poll = asyncio.create_task(node.watch(prefix="q:", timeout=5, **{"from": start}))
    await asyncio.sleep(0.1)
    await node.put("elsewhere", 1)  # not under the prefix: the poll stays parked
    await asyncio.sleep(0.1)
    assert not poll.done()
    v = await node.put("q:1", "x")
    status, body = await asyncio.wait_for(poll, 5)
    assert status == 200 and [e["revision"] for e in body["events"]] == [v] and body["revision"] == v


async def test_at_the_timeout_an_empty_answer_is_the_progress_notification(node: Node) -> None:
    await node.put("noise", 1)
    start = node.driver.sm.applied_index + 1
    poll = asyncio.create_task(node.watch(prefix="quiet:", timeout=0.5, **{"from": start}))
    await asyncio.sleep(0.1)
    await node.put("noise", 2)
    status, body = await asyncio.wait_for(poll, 5)
    assert status == 200 and body["events"] == []
    assert body["revision"] == node.driver.sm.applied_index  # nothing under quiet: up to here


async def test_from_beyond_the_applied_index_waits_for_it(node: Node) -> None:
    ahead = node.driver.sm.applied_index + 3
    poll = asyncio.create_task(node.watch(prefix="", timeout=5, **{"from": ahead}))
    await node.put("w1", 1)
    await node.put("w2", 2)
    await asyncio.sleep(0.1)
    assert not poll.done()  # the node has not applied that far: never an error, it waits
    v = await node.put("w3", 3)
    assert v == ahead
    status, body = await asyncio.wait_for(poll, 5)
    assert status == 200 and [e["key"] for e in body["events"]] == ["w3"]


async def test_from_beyond_applied_at_the_timeout_answers_the_callers_own_revision(node: Node) -> None:
    ahead = node.driver.sm.applied_index + 100
    status, body = await node.watch(prefix="", timeout=0.2, **{"from": ahead})
    assert status == 200 and body == {"events": [], "revision": ahead - 1}


async def test_limit_stops_at_a_revision_and_the_next_poll_goes_on_without_gap(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    versions = [await node.put(f"l:{i}", i) for i in range(7)]
    seen: list[int] = []
    frm = start
    while len(seen) < 7:
        status, body = await node.watch(prefix="l:", limit=3, **{"from": frm})
        assert status == 200 and len(body["events"]) <= 3
        seen += [e["revision"] for e in body["events"]]
        frm = body["revision"] + 1
    assert seen == versions


async def test_compacted_names_the_oldest_revision() -> None:
    async for node in _node(WatchLimits(history_events=5, ring_events=5, prune_batch_rows=2)):
        for i in range(12):
            await node.put(f"c:{i}", i)
        while await node.api.watch_hub.prune_step():
            pass
        oldest = node.driver.sm.history.oldest
        assert oldest > 1 and node.driver.sm.history.events <= 5
        status, body = await node.watch(prefix="c:", **{"from": 1})
        assert status == 410
        err = body["error"]
        assert err["code"] == p.COMPACTED and err["oldest"] == oldest
        assert err["revision"] == node.driver.sm.applied_index and str(oldest) in err["message"]
        status, body = await node.watch(prefix="c:", **{"from": oldest})
        assert status == 200 and body["events"][0]["revision"] >= oldest


async def test_old_history_beyond_the_ring_is_read_from_the_store_bounded(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    for i in range(60):  # 3x the ring, more than max_examined
        await node.put(f"bulk:{i}", i)
    v = await node.put("rare", 1)
    seen: list[Any] = []
    frm, answers = start, 0
    while not seen:
        status, body = await node.watch(prefix="rare", **{"from": frm})
        assert status == 200
        seen, frm, answers = body["events"], body["revision"] + 1, answers + 1
    assert [e["revision"] for e in seen] == [v] and answers >= 2  # bounded: several answers


async def test_the_stream_op_answers_like_http_and_parked_polls_do_not_block_others(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    async with node.http.ws_connect(node.url("/v1/stream")) as ws:
        parked = [
            {"id": i, "op": "watch", "query": {"prefix": f"s{i}:", "from": str(start), "timeout": "5"}}
            for i in range(4)
        ]
        await ws.send_bytes(msgpack.packb(parked, use_bin_type=True))
        await asyncio.sleep(0.1)
        v = await node.put("s2:x", 1)
        await ws.send_bytes(msgpack.packb([{"id": 99, "op": "get", "name": "s2:x"}], use_bin_type=True))
        got: dict[int, Any] = {}
        while 2 not in got or 99 not in got:
            msg = await asyncio.wait_for(ws.receive(), 5)
            for rid, status, body in msgpack.unpackb(msg.data, raw=False):
                got[rid] = (status, body)
        assert got[2] == (200, {"events": [got[2][1]["events"][0]], "revision": v})
        assert got[2][1]["events"][0]["key"] == "s2:x" and got[99][0] == 200
        assert not {0, 1, 3} & set(got)  # the other prefixes were not woken


async def test_the_hub_wakes_only_the_polls_whose_prefix_matches(node: Node) -> None:
    hub = node.api.watch_hub
    start = node.driver.sm.applied_index + 1
    prefixes = [f"p{i:04d}:" for i in range(1000)] + ["", "p0", "p0500:x"]
    q = {p_: parse_query({"prefix": p_, "from": str(start), "timeout": "5"}, LIMITS) for p_ in prefixes}
    polls = {p_: asyncio.create_task(hub.watch(q[p_], _no_barrier)) for p_ in prefixes}
    await asyncio.sleep(0.2)
    assert all(not t.done() for t in polls.values())
    # 1,003 parked polls in 4 buckets by prefix length: an event costs 4 dict lookups, not 1,003.
    assert sorted(hub._by_len) == [0, 2, 6, 7] and len(hub._by_len[6]) == 1000
    await node.put("p0500:xyz", 1)
    await asyncio.sleep(0.1)
    woke = {p_ for p_, t in polls.items() if t.done()}
    assert woke == {"", "p0", "p0500:", "p0500:x"}
    hub.close()
    await asyncio.gather(*polls.values())


async def test_a_parked_http_poll_outlives_the_request_timeout_and_shutdown_answers_it(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    node.api.timeout_s = 0.2  # the node's request timeout: not a limit on a long poll
    poll = asyncio.create_task(node.watch(prefix="late:", timeout=3, **{"from": start}))
    await asyncio.sleep(0.6)
    assert not poll.done()
    node.api.watch_hub.close()  # what shutting down does first
    status, body = await asyncio.wait_for(poll, 5)
    assert status == 200 and body["events"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "0"}, "from"),
        ({"from": "x"}, "from"),
        ({"limit": "0"}, "limit"),
        ({"timeout": "-1"}, "timeout"),
        ({"timeout": "nan"}, "timeout"),
        ({"consistency": "eventual"}, "consistency"),
    ],
)
def test_bad_queries_name_their_field(query: dict[str, str], field: str) -> None:
    with pytest.raises(Refusal) as err:
        parse_query(query, LIMITS)
    assert err.value.code == p.INVALID_REQUEST and field in err.value.message


def test_limit_and_timeout_above_the_maximum_are_reduced_to_it() -> None:
    q = parse_query({"limit": "100000", "timeout": "3600", "from": "5"}, LIMITS)
    assert (q.limit, q.wait_s, q.from_rev) == (LIMITS.max_events, LIMITS.max_wait_s, 5)
    assert parse_query({}, LIMITS).wait_s == 5  # the default 10 s, capped by this node's maximum
    assert parse_query({}, LIMITS).limit == 50  # the default 1000, capped likewise
    assert parse_query({}, WatchLimits(max_events=5000)).limit == 1000  # a higher maximum: still 1000


def test_unknown_parameters_and_long_prefixes_are_refused() -> None:
    with pytest.raises(Refusal, match="unknown parameter 'after'"):
        parse_query({"after": "x"}, LIMITS)
    with pytest.raises(Refusal) as err:
        parse_query({"prefix": "x" * 2000}, LIMITS)
    assert err.value.code == p.KEY_TOO_LARGE


async def _no_barrier() -> None:
    return None


_CLUSTER = """\
cluster_id: test
nodes:
  - {id: n1, address: "127.0.0.1:7001", data_dir: ./data/n1}
auth: {enabled: false}
settings:
"""


@pytest.mark.parametrize(
    ("settings", "field", "says"),
    [
        ("watch_max_events: 200000", "settings.watch_max_events", "at most 100000"),
        ("watch_max_wait_s: 7200", "settings.watch_max_wait_s", "at most 3600"),
        ("watch_history_events: 10", "settings.watch_history_events", "at least 1000"),
        ("watch_history_bytes: 1000", "settings.watch_history_bytes", "at least 1049600"),
        ("watch_history_age_s: 0", "settings.watch_history_age_s", "not positive"),
        ("watch_max_wait_s: 1.5", "settings.watch_max_wait_s", "whole number of seconds"),
    ],
)
def test_watch_settings_are_validated_with_one_precise_error(
    tmp_path: Path, settings: str, field: str, says: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(_CLUSTER + "  " + settings + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{field}:" in str(err.value) and says in str(err.value)


def test_the_node_takes_its_watch_limits_from_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        _CLUSTER + "  watch_max_events: 5000\n  watch_history_events: 5000\n  watch_max_wait_s: 30\n"
    )
    lim = WatchLimits.of(load_config(path).settings)
    assert (lim.max_events, lim.history_events, lim.max_wait_s) == (5000, 5000, 30)
    assert WatchLimits.of(Settings()) == WatchLimits(max_key_bytes=Settings().max_key_bytes)


async def test_metrics_count_parked_polls_delivered_events_and_history(node: Node) -> None:
    start = node.driver.sm.applied_index + 1
    await node.put("m:1", 1)
    status, _ = await node.watch(prefix="m:", **{"from": start})
    assert status == 200
    poll = asyncio.create_task(node.watch(prefix="m:", timeout=5, **{"from": start + 10}))
    await asyncio.sleep(0.2)
    async with node.http.get(node.url("/metrics")) as resp:
        text = await resp.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("raftstate_watch"))
    assert float(values["raftstate_watch_parked"]) == 1
    assert float(values["raftstate_watch_events_delivered_total"]) == 1
    assert float(values["raftstate_watch_history_events"]) == node.driver.sm.history.events >= 1
    assert float(values["raftstate_watch_history_oldest_revision"]) == 1
    node.api.watch_hub.close()
    await poll


async def test_a_store_installed_from_the_leader_brings_its_history_and_the_ring_starts_over(
    node: Node,
) -> None:
    start = node.driver.sm.applied_index + 1
    versions = [await node.put(f"inst:{i}", i) for i in range(6)]
    status, body = await node.watch(prefix="inst:", **{"from": start})
    assert [e["revision"] for e in body["events"]] == versions  # served from the ring
    # A copy of "the leader's" store: the same state, its history pruned up to versions[2].
    copy = sqlite3.connect(":memory:", check_same_thread=False)
    node.driver.sm.flush()
    node.driver.sm.tables.conn.backup(copy)
    leader = KVStateMachine(StateTables(copy))
    while leader.history.oldest <= versions[2]:
        leader.history.prune_step(0, 1 << 30, 0, batch_rows=1)
    leader.flush()
    node.driver.sm.reopen(StateTables(copy))  # what installing a received store does
    status, body = await node.watch(prefix="inst:", **{"from": start})
    assert status == 410 and body["error"]["oldest"] == leader.history.oldest  # oldest follows
    status, body = await node.watch(prefix="inst:", **{"from": leader.history.oldest})
    assert [e["revision"] for e in body["events"]] == versions[3:]  # the copy's history, not the ring
    v = await node.put("inst:new", 1)
    status, body = await node.watch(prefix="inst:", **{"from": versions[-1] + 1})
    assert [e["revision"] for e in body["events"]] == [v]
