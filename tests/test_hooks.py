"""The TEST-ONLY hooks (node/test_hooks.py): read in one place, once; off — inert — unless asked for.

Each hook is shown inert when not configured even while its environment variable is set around
the component (the component never reads the environment itself), and working when handed to it.
The hooks' effects on a real cluster are covered elsewhere: a slow disk (tests/test_cluster.py),
clock skew (tests/test_jobstate_cluster.py), partitions through the dial map and both injected
bugs (tests/test_chaos.py, tests/test_chaos_parts.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from test_transport import CLUSTER, FAST, Node, eventually, free_port, hb

from raftstate.node.api.handlers import Api
from raftstate.node.api.schema import ApiLimits
from raftstate.node.config import ClusterConfig, NodeConfig, Settings
from raftstate.node.driver import RaftDriver
from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.transport import PeerTransport
from raftstate.node.runtime.clock import NodeClock
from raftstate.node.runtime.cluster_time import ClusterTime
from raftstate.node.server import NodeServer
from raftstate.node.storage import store
from raftstate.node.storage.late_write import LateWriteStorage
from raftstate.node.storage.store import DiskStorage, MemoryStorage
from raftstate.node.test_hooks import (
    ACK_BEFORE_FSYNC,
    BUG_ENV,
    CLOCK_OFFSET_FILE_ENV,
    HOOK_ENVS,
    PEER_DIAL_MAP_ENV,
    SLOW_FSYNC_ENV,
    STALE_READS,
    TestHookError,
    TestHooks,
)
from raftstate.raft import Role
from raftstate.raft.messages import Entry

ROOT = Path(__file__).resolve().parent.parent
DEAD = "127.0.0.1:1"  # nothing listens there: a dial to it never arrives


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOOK_ENVS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hostile_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every hook's variable set, to values that would show if a component read them itself."""
    (tmp_path / "env-clock").write_text("-300000")
    (tmp_path / "env-dial.json").write_text(json.dumps({"n2": DEAD, "n3": DEAD}))
    env = {
        SLOW_FSYNC_ENV: "700",
        CLOCK_OFFSET_FILE_ENV: str(tmp_path / "env-clock"),
        PEER_DIAL_MAP_ENV: str(tmp_path / "env-dial.json"),
        BUG_ENV: STALE_READS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# --------------------------------------------------------------------------- reading them


@pytest.mark.usefixtures("clean_env")
def test_a_clean_environment_turns_every_hook_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="raftstate.node"):
        hooks = TestHooks.from_env()
    assert hooks == TestHooks() and not hooks.active
    assert hooks.slow_fsync_ms == 0 and hooks.fsync_delay_s == 0
    assert hooks.clock_offset_file is None and hooks.peer_dial_map is None and hooks.injected_bug is None
    assert hooks.dial_map() is None and hooks.read_barrier() is None
    inner = MemoryStorage()
    assert hooks.storage(inner) is inner
    assert hooks.to_env() == {}
    assert caplog.records == []  # nothing to announce
    # empty (or blank) values are "off" too
    assert TestHooks.from_env(dict.fromkeys(HOOK_ENVS, "")) == TestHooks()
    assert TestHooks.from_env(dict.fromkeys(HOOK_ENVS, "  ")) == TestHooks()


def test_every_field_has_one_variable_and_round_trips(tmp_path: Path) -> None:
    on = TestHooks(
        slow_fsync_ms=700,
        clock_offset_file=tmp_path / "clock",
        peer_dial_map=tmp_path / "dial.json",
        injected_bug=ACK_BEFORE_FSYNC,
    )
    env = on.to_env()
    assert sorted(env) == sorted(HOOK_ENVS)
    assert len(dataclasses.fields(TestHooks)) == len(HOOK_ENVS)
    assert TestHooks.from_env(env) == on and on.active
    for name in HOOK_ENVS:  # each variable alone turns exactly one hook on
        one = TestHooks.from_env({name: env[name]})
        assert one.active
        assert sum(getattr(one, f.name) != getattr(TestHooks(), f.name) for f in dataclasses.fields(one)) == 1


def test_a_hook_that_is_on_is_announced_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raftstate.node"):
        TestHooks.from_env({SLOW_FSYNC_ENV: "250", CLOCK_OFFSET_FILE_ENV: str(tmp_path / "c")})
    assert "TEST-ONLY HOOKS ON (slow_fsync_ms, clock_offset_file)" in caplog.text
    assert "every log fsync is delayed by 250 ms" in caplog.text
    assert "clock is offset for testing" in caplog.text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (SLOW_FSYNC_ENV, "fast", "is not a number of milliseconds"),
        (SLOW_FSYNC_ENV, "-5", "in 0..60000"),
        (SLOW_FSYNC_ENV, "nan", "in 0..60000"),
        (SLOW_FSYNC_ENV, "1e9", "in 0..60000"),
        (BUG_ENV, "typo", "not a known injected bug; choose one of stale-reads, ack-before-fsync"),
        (CLOCK_OFFSET_FILE_ENV, "/no/such/folder/clock", "the folder '/no/such/folder' does not exist"),
        (PEER_DIAL_MAP_ENV, "/no/such/folder/dial.json", "the folder '/no/such/folder' does not exist"),
    ],
)
def test_an_unusable_value_stops_start_up_naming_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(TestHookError, match=message) as exc:
        TestHooks.from_env({name: value})
    assert name in str(exc.value) and isinstance(exc.value, ValueError)


def test_no_other_module_names_a_hook_variable() -> None:
    """One place reads and decides: the variables' names appear in no shipped module but the hook
    module (the others import its constants, or take their hook as an argument)."""
    offenders = []
    for folder in ("raft", "node", "client", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "node" / "test_hooks.py":
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in HOOK_ENVS if n in text]
    assert offenders == []


# --------------------------------------------------------------------------- each component


def _save_some(s: DiskStorage) -> None:
    s.load()
    s.save(None, [Entry(1, 1, 0), Entry(2, 1, 0)], None)


def test_storage_has_no_fsync_delay_unless_handed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile_env: dict[str, str]
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(store, "time", SimpleNamespace(sleep=sleeps.append))
    with DiskStorage(tmp_path / "off", node_id="n1", fsync_delay_s=TestHooks().fsync_delay_s) as s:
        _save_some(s)
    with DiskStorage(tmp_path / "default", node_id="n1") as s:
        _save_some(s)
    assert sleeps == []  # RAFTSTATE_FAULT_SLOW_FSYNC_MS=700 around it changed nothing
    on = TestHooks(slow_fsync_ms=5)
    with DiskStorage(tmp_path / "on", node_id="n1", fsync_delay_s=on.fsync_delay_s) as s:
        _save_some(s)
    assert sleeps == [0.005]


def test_the_clock_has_no_offset_unless_handed_a_file(tmp_path: Path, hostile_env: dict[str, str]) -> None:
    wall = 1_700_000_000.0
    clock = NodeClock(TestHooks().clock_offset_file, wall=lambda: wall, monotonic=lambda: 1.0)
    assert clock.now_ms() == int(wall * 1000) and clock.offset_file is None
    on = TestHooks(clock_offset_file=Path(hostile_env[CLOCK_OFFSET_FILE_ENV]))
    clock = NodeClock(on.clock_offset_file, wall=lambda: wall, monotonic=lambda: 1.0)
    assert clock.now_ms() == int(wall * 1000) - 300_000


async def _delivered(t: PeerTransport, to: Node, seq: int) -> None:
    await t.start()
    try:
        t.send(hb("n1", "n2", seq))
        await eventually(lambda: any(m.seq == seq for m in to.got["n1"]))  # type: ignore[attr-defined]
    finally:
        await t.close()


async def test_the_transport_dials_configured_addresses_unless_handed_a_dial_map(
    tmp_path: Path, hostile_env: dict[str, str]
) -> None:
    n2 = Node("n2", free_port())
    await n2.up()
    try:
        # off: the environment's map (n2 -> a dead port) is ignored; the configured address is dialled
        t = PeerTransport("n1", CLUSTER, {"n2": n2.address}, options=FAST, dial_map=TestHooks().dial_map())
        await _delivered(t, n2, 1)
        # on: the configured address is dead, the handed map points at n2
        (tmp_path / "dial.json").write_text(json.dumps({"n2": n2.address}))
        on = TestHooks(peer_dial_map=tmp_path / "dial.json")
        t = PeerTransport("n1", CLUSTER, {"n2": DEAD}, options=FAST, dial_map=on.dial_map())
        await _delivered(t, n2, 2)
    finally:
        await n2.down()


class _Driver:
    """Just enough of a RaftDriver for Api._read_time: counts ReadIndex barriers."""

    def __init__(self) -> None:
        self.barriers = 0

    async def read_barrier(self, timeout_s: float) -> None:
        self.barriers += 1


def _api(driver: _Driver, hooks: TestHooks) -> Api:
    return Api(
        cast(RaftDriver, driver),
        NodeMetrics(),
        cluster_time=cast(ClusterTime, SimpleNamespace(now_ms=lambda: 1234)),
        limits=ApiLimits(),
        max_request_bytes=1 << 20,
        read_barrier=hooks.read_barrier(),
    )


async def test_api_reads_go_through_readindex_unless_the_stale_reads_bug_is_on() -> None:
    d = _Driver()
    api = _api(d, TestHooks())
    assert await api._read_time({}) == 1234 and d.barriers == 1
    assert await api._read_time({"consistency": "stale"}) == 1234 and d.barriers == 1  # stale: none
    bugged = _api(d, TestHooks(injected_bug=STALE_READS))
    assert await bugged._read_time({}) == 1234 and d.barriers == 1  # the bug: no ReadIndex


# --------------------------------------------------------------------------- the server's wiring


def _config(tmp_path: Path) -> ClusterConfig:
    node = NodeConfig("n1", f"127.0.0.1:{free_port()}", tmp_path / "n1")
    return ClusterConfig(tmp_path / "cluster.yaml", "hooks-test", (node,), Settings(test_hooks=True))


@pytest.mark.usefixtures("clean_env")
def test_the_server_reads_the_hooks_from_the_environment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert NodeServer(_config(tmp_path), "n1").hooks == TestHooks()
    monkeypatch.setenv(SLOW_FSYNC_ENV, "700")
    server = NodeServer(_config(tmp_path), "n1")
    assert server.hooks == TestHooks(slow_fsync_ms=700)
    monkeypatch.setenv(SLOW_FSYNC_ENV, "5")
    assert server.hooks.slow_fsync_ms == 700  # read once: later changes are not seen
    monkeypatch.setenv(BUG_ENV, "typo")
    with pytest.raises(TestHookError):
        NodeServer(_config(tmp_path), "n1")  # before anything is opened


class _Running:
    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self.barriers = 0

    async def get(self, key: str) -> int:
        """A linearizable read over HTTP; its status."""
        async with aiohttp.ClientSession() as s, s.get(f"http://{self.server.node.address}/v1/kv/{key}") as r:
            return r.status


async def _start(tmp_path: Path, hooks: TestHooks) -> _Running:
    server = NodeServer(_config(tmp_path), "n1", hooks=hooks)
    await server.start()
    assert server.driver is not None
    run = _Running(server)
    real = server.driver.read_barrier

    async def counting(timeout_s: float) -> None:
        run.barriers += 1
        await real(timeout_s)

    server.driver.read_barrier = counting  # type: ignore[method-assign]
    deadline = time.monotonic() + 10
    while server.driver.raft.role != Role.LEADER:
        assert time.monotonic() < deadline, "a one-node cluster elected no leader"
        await asyncio.sleep(0.02)
    return run


async def test_the_server_hands_each_component_only_its_hook(
    tmp_path: Path, hostile_env: dict[str, str]
) -> None:
    """With every variable set around it but hooks handed in all off, the node is the production
    node; handed hooks that are on, each component gets its own."""
    run = await _start(tmp_path / "off", TestHooks())
    s = run.server
    try:
        assert type(s.storage) is DiskStorage and s.storage.fsync_delay_s == 0
        assert s.clock is not None and s.clock.offset_file is None
        assert s.transport is not None and s.transport._dial_map.path is None
        assert await run.get("k") == 404 and run.barriers == 1  # ReadIndex, then "not found"
    finally:
        await s.stop()
    (tmp_path / "on").mkdir()
    on = TestHooks(
        slow_fsync_ms=1,
        clock_offset_file=tmp_path / "on/clock",
        peer_dial_map=tmp_path / "on/dial.json",
        injected_bug=STALE_READS,
    )
    run = await _start(tmp_path / "on", on)
    s = run.server
    try:
        assert type(s.storage) is DiskStorage and s.storage.fsync_delay_s == 0.001
        assert s.clock is not None and s.clock.offset_file == on.clock_offset_file
        assert s.transport is not None and s.transport._dial_map.path == on.peer_dial_map
        assert await run.get("k") == 404 and run.barriers == 0  # the stale-reads bug: no ReadIndex
    finally:
        await s.stop()
    run = await _start(tmp_path / "late", TestHooks(injected_bug=ACK_BEFORE_FSYNC))
    try:
        assert isinstance(run.server.storage, LateWriteStorage)
    finally:
        await run.server.stop()
