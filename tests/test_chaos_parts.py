"""The chaos suite's moving parts on their own: the partition proxy (and its slow links), the
dial-map hook, the bug switch, the fault schedule, the preload's keys, the command line's profiles
and the script's refusal of faults that are not available yet."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raftstate.node.bench.targets import marker_key
from raftstate.node.chaos.cli import PROFILES, options
from raftstate.node.chaos.faults import DURATION_S, FAULTS, plan
from raftstate.node.chaos.proxy import ProxyLayer
from raftstate.node.chaos.run import RunConfig, replay_command
from raftstate.node.peers.fault_dial import DialMap
from raftstate.node.storage.late_write import LateWriteStorage
from raftstate.node.storage.store import MemoryStorage
from raftstate.node.test_hooks import BUG_ENV, TestHooks
from raftstate.raft.messages import Entry, HardState

ROOT = Path(__file__).resolve().parent.parent


async def _roundtrip(port: int, data: bytes, timeout: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), timeout)
    finally:
        writer.close()


async def test_proxy_forwards_then_blackholes_then_heals() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = ProxyLayer({"a": "127.0.0.1:1", "b": f"127.0.0.1:{port}"})
    proxy.start()
    try:
        maps = proxy.write_dial_maps(Path(tempfile.mkdtemp()))
        via = int(json.loads(maps["a"].read_text())["b"].rsplit(":", 1)[1])  # a's route to b
        assert await _roundtrip(via, b"hello") == b"hello"
        # a live connection is dropped by the cut: nothing buffered leaks through
        reader, writer = await asyncio.open_connection("127.0.0.1", via)
        writer.write(b"one")
        assert await asyncio.wait_for(reader.read(100), 1) == b"one"
        proxy.cut([("a", "b")])
        assert proxy.cut_links() == [("a", "b")]
        assert await asyncio.wait_for(reader.read(100), 2) == b""  # closed
        writer.close()
        # new connections are accepted but nothing comes back (a black hole, not a refusal)
        with pytest.raises(TimeoutError):
            await _roundtrip(via, b"lost", timeout=0.5)
        proxy.heal()
        assert await _roundtrip(via, b"again") == b"again"
    finally:
        proxy.close()
        server.close()


PUSH = 400_000


async def _push(port: int) -> float:
    """Send PUSH bytes through a link and wait for the far end to have them all: seconds taken."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"x" * PUSH)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 10) == b"all"
        return time.monotonic() - t0
    finally:
        writer.close()


async def test_slow_link_caps_what_each_connection_carries_until_healed() -> None:
    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while n < PUSH and (data := await reader.read(65536)):
            n += len(data)
        writer.write(b"all")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = ProxyLayer({"a": "127.0.0.1:1", "b": f"127.0.0.1:{port}"})
    proxy.start()
    try:
        maps = proxy.write_dial_maps(Path(tempfile.mkdtemp()))
        via = int(json.loads(maps["a"].read_text())["b"].rsplit(":", 1)[1])
        proxy.slow([("a", "b")], 400_000)
        assert await _push(via) >= 0.8  # ~1 s at 400 kB/s
        assert proxy.cut_links() == []  # slow is not cut
        proxy.heal([("a", "b")])
        assert await _push(via) < 0.5
    finally:
        proxy.close()
        server.close()


def test_dial_map_overrides_only_named_peers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"n2": "127.0.0.1:9999"}))
    m = DialMap(path)
    assert m.address("n2", "127.0.0.1:7002") == "127.0.0.1:9999"
    assert m.address("n3", "127.0.0.1:7003") == "127.0.0.1:7003"
    assert DialMap(None).address("n2", "127.0.0.1:7002") == "127.0.0.1:7002"
    with caplog.at_level(logging.WARNING):
        path.write_text('{"n2": "http://x:1"}')
        assert m.address("n2", "127.0.0.1:7002") == "127.0.0.1:7002"  # bad override: ignored, loudly
        path.unlink()
        assert m.address("n2", "127.0.0.1:7002") == "127.0.0.1:7002"
    assert "unusable" in caplog.text


def test_bug_switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(BUG_ENV, raising=False)
    assert TestHooks.from_env().injected_bug is None
    monkeypatch.setenv(BUG_ENV, "stale-reads")
    with caplog.at_level(logging.ERROR):
        assert TestHooks.from_env().injected_bug == "stale-reads"
    assert "TEST-ONLY BUG INJECTED" in caplog.text
    monkeypatch.setenv(BUG_ENV, "typo")
    with pytest.raises(ValueError, match="not a known injected bug; choose one of"):
        TestHooks.from_env()


def test_schedule_is_seeded_and_fits_the_run() -> None:
    a = plan(["kill", "pause", "partition", "clock", "restart-all"], 60, seed=7)
    assert a == plan(["kill", "pause", "partition", "clock", "restart-all"], 60, seed=7)
    assert a != plan(["kill", "pause", "partition", "clock", "restart-all"], 60, seed=8)
    assert len(a) >= 6 and all(f.at_s + f.duration_s <= 58 for f in a)
    assert {f.kind for f in a[:5]} == {"kill", "pause", "partition", "clock", "restart-all"}
    assert all(DURATION_S[f.kind][0] <= f.duration_s <= DURATION_S[f.kind][1] for f in a)
    assert all(x.at_s + x.duration_s < y.at_s for x, y in itertools.pairwise(a))


def test_catch_up_faults_are_scheduled_like_any_other() -> None:
    kinds = ["wipe-follower", "kill-receiver", "kill-sender", "kill"]
    assert set(kinds) <= set(FAULTS)
    a = plan(kinds, 50, seed=3)
    assert {f.kind for f in a[:4]} == set(kinds)


def test_preload_keys_are_random_markers_named_by_run_and_number() -> None:
    keys = [marker_key("preload-7", i) for i in range(2000)]
    shape = re.compile(r"webhooks:(stripe|github|shopify|twilio|slack):evt_[0-9a-f]{16}")
    assert all(shape.fullmatch(k) for k in keys)
    assert len(set(keys)) == 2000 and keys != sorted(keys)  # distinct, in no order
    assert keys[5] == marker_key("preload-7", 5) and keys[5] != marker_key("preload-8", 5)
    assert len({k.split(":")[1] for k in keys}) == 5


def test_profile_gives_defaults_that_options_override() -> None:
    a = options(["--profile", "catch-up", "--duration", "30"])
    assert (a.preload, a.duration) == (PROFILES["catch-up"]["preload"], 30)
    assert a.kinds == PROFILES["catch-up"]["faults"].split(",")
    b = options([])
    assert (b.preload, b.kinds) == (0, ["kill", "pause", "partition", "clock", "restart-all"])
    cfg = RunConfig(seed=5, duration_s=30, faults=tuple(a.kinds), preload=a.preload)
    assert replay_command(cfg).endswith("--seed 5 --preload 1000000")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--faults", ","], 2, "give at least one fault kind"),
        (["--faults", "kill,typo"], 2, "unknown fault 'typo'"),
        (["--inject-bug", "nope"], 2, "invalid choice"),
        (["--preload", "-1"], 2, "--preload >= 0"),
        (["--profile", "nope"], 2, "invalid choice"),
    ],
)
def test_script_refuses_what_it_cannot_do(args: list[str], code: int, message: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == code and message in out.stderr, out.stderr


def test_ack_before_fsync_storage_returns_before_writing() -> None:
    """The injected durability bug: save() returns at once, the write happens ~delay later, in
    order; reading the snapshot (or closing) first waits for what was queued before it."""
    inner = MemoryStorage()
    late = LateWriteStorage(inner, delay_s=0.3)
    late.save(HardState(term=1), [Entry(1, 1, 0), Entry(2, 1, 0)], None)
    late.save(None, [Entry(3, 1, 0)], None)
    assert inner.last_index == 0  # "durable" for the driver, nowhere for a crash
    assert late.snapshot_data() is None  # drains first
    assert inner.last_index == 3 and inner.hard_state.term == 1
    late.save(None, [Entry(4, 1, 0)], None)
    late.close()
    assert inner.last_index == 4
