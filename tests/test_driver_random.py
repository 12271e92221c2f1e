"""Seeded, randomized runs of real RaftDrivers in one event loop (the farm: tests/driverfarm.py).

The core has its own seeded simulator (node/sim/); this file aims at the *driver*: its ready
loop and persist worker, group commit over queued Ready batches, snapshots written and sent in the
background, installs racing local snapshots, crash and restart from what was saved. Each seed runs
a few seconds of real time (10 ms ticks) with message loss, duplication, reordering, partitions,
slow disks, crashes and leadership transfers under a client workload of writes and linearizable
reads; the invariants are listed in driverfarm's docstring.

Knobs (environment):
    RAFTSTATE_DRIVER_SEEDS=500        how many seeds (default 20; a 5-node cluster every fourth)
    RAFTSTATE_DRIVER_SEED_BASE=1000   first seed (a soak can explore new ones)
    RAFTSTATE_DRIVER_SEED=17          run only this seed (replay; best effort: real threads)
    RAFTSTATE_DRIVER_CHAOS_S=5        seconds of faults and clients per seed (default 1.2)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Sequence

import pytest

from driverfarm import CheckedStateMachine, Checker, Farm, FarmConfig, run_farm
from raftstate.node.driver import DriverSettings, RaftDriver
from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.storage.store import MemoryStorage
from raftstate.raft import (
    AppendEntries,
    Entry,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    SnapshotMeta,
)
from raftstate.raft.ready import SnapshotToInstall


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


def _seeds() -> list[int]:
    if os.environ.get("RAFTSTATE_DRIVER_SEED"):
        return [_env_int("RAFTSTATE_DRIVER_SEED", 0)]
    base = _env_int("RAFTSTATE_DRIVER_SEED_BASE", 0)
    return list(range(base, base + _env_int("RAFTSTATE_DRIVER_SEEDS", 20)))


def nodes_for(seed: int) -> int:
    return 5 if seed % 4 == 3 else 3


CHAOS_S = float(os.environ.get("RAFTSTATE_DRIVER_CHAOS_S", "") or 1.2)


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}-n{nodes_for(s)}")
def test_drivers_stay_safe_and_live_under_faults(seed: int) -> None:
    """Safety under every fault mix the farm draws, then liveness once the faults stop."""
    farm = run_farm(seed, FarmConfig.for_seed(seed, nodes=nodes_for(seed), chaos_s=CHAOS_S))
    print(f"seed {seed}: {farm.stats}")  # shown with -s, or -rP


# ============================================================================ driver regressions


def test_a_leader_commits_as_soon_as_its_own_fsync_completes() -> None:
    """Regression: after a batch's fsync, ``advance()`` lets a leader count its own vote and commit,
    but the persist worker did not wake the ready loop, so the commit was noticed only at the next
    tick or incoming message. On a one-node cluster every write took a whole tick (50 ms by default,
    for a 2 ms disk); in bigger clusters, whenever the leader's fsync was the last vote needed."""
    tick_s = 0.25
    config = FarmConfig(nodes=1, tick_ms=int(tick_s * 1000), election_ticks=2, disk_max_ms=2.0)

    async def write_latencies() -> list[float]:
        farm = Farm(0, config)
        await farm.start_all()
        try:
            (d,) = farm.live()
            while not d.is_leader():
                await asyncio.sleep(0.01)
            latencies = []
            for i in range(5):
                t0 = time.perf_counter()
                await d.propose(encode_command("set", key="k", value=i), timeout_s=5)
                latencies.append(time.perf_counter() - t0)
            return latencies
        finally:
            await farm.shutdown()

    latencies = asyncio.run(write_latencies())
    assert statistics.median(latencies) < tick_s / 2.5, f"write latencies {latencies}: waiting for ticks"


class GatedStorage(MemoryStorage):
    """A MemoryStorage whose ``save`` blocks until the test opens the gate, recording each call,
    so that a test can queue Ready batches behind an fsync in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.saves: list[tuple[int | None, list[int]]] = []  # (snapshot index, entry indexes)

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: SnapshotToInstall | None
    ) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.saves.append((snapshot.meta.index if snapshot else None, [e.index for e in entries]))
        super().save(hard_state, entries, snapshot)


class NullTransport:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def update_peers(self, addresses: dict[str, str]) -> None:
        pass


THREE = Membership(voters=frozenset({"n1", "n2", "n3"}))


def _commands(lo: int, hi: int) -> tuple[Entry, ...]:
    return tuple(Entry(i, 1, 0, data=encode_command("set", key=f"k{i}", value=i)) for i in range(lo, hi + 1))


def _snapshot_at(index: int) -> tuple[SnapshotMeta, bytes]:
    """The leader's state machine after applying the first ``index`` commands, as a snapshot."""
    sm = KVStateMachine()
    for e in _commands(1, index):
        sm.apply(e.index, e.time_ms, e.data)
    return SnapshotMeta(index, 1, THREE, 0), sm.snapshot()


async def _follower_behind_a_slow_fsync(
    threshold: int, steps: list[Message]
) -> tuple[RaftDriver, GatedStorage]:
    """A follower n2 whose first save blocks; ``steps`` arrive while it does, one Ready each."""
    storage = GatedStorage()
    settings = DriverSettings(tick_ms=60_000, snapshot_threshold=threshold)  # no ticks: no elections
    d = RaftDriver("n2", bootstrap=THREE, storage=storage, transport=NullTransport(), settings=settings)
    await d.start()
    for msg in steps:
        d.step(msg)
        for _ in range(5):  # let the ready loop take this step's Ready before the next step
            await asyncio.sleep(0)
        if not storage.entered.is_set():
            await asyncio.to_thread(storage.entered.wait, 5)
    storage.gate.set()
    for _ in range(200):
        if d.sm.applied_index >= 10 or d.fatal_error is not None:
            break
        await asyncio.sleep(0.01)
    await d.stop()
    return d, storage


def test_an_install_queued_behind_appends_is_saved_on_its_own() -> None:
    """Regression (d34af6a): appends queued behind an fsync, then a snapshot from the leader. Group
    commit merged them into one save — entries that lie *before* the snapshot, with it — which the
    storage refuses, and the persist worker died. The install must start a batch of its own."""
    meta, data = _snapshot_at(10)
    d, storage = asyncio.run(
        _follower_behind_a_slow_fsync(
            threshold=1_000,
            steps=[
                AppendEntries(1, "n1", "n2", 0, 0, _commands(1, 3), 0),  # saving, blocked
                AppendEntries(1, "n1", "n2", 3, 1, _commands(4, 5), 0),  # queued
                InstallSnapshot(1, "n1", "n2", meta, data),  # queued behind it
            ],
        )
    )
    assert d.fatal_error is None
    assert storage.saves == [(None, [1, 2, 3]), (None, [4, 5]), (10, [])]
    assert d.sm.applied_index == 10 and d.sm.get("k10") is not None


def test_no_local_snapshot_while_an_install_is_queued() -> None:
    """Regression (d34af6a): entries applied past the snapshot threshold while a snapshot from the
    leader is queued: a local snapshot at the applied index would lie below the core's (already
    restored) snapshot index — the core refuses it and the persist worker died."""
    meta, data = _snapshot_at(10)
    d, storage = asyncio.run(
        _follower_behind_a_slow_fsync(
            threshold=3,
            steps=[
                AppendEntries(1, "n1", "n2", 0, 0, _commands(1, 5), 5),  # saving; applies 1..5 after
                InstallSnapshot(1, "n1", "n2", meta, data),  # queued: the core restored to 10
            ],
        )
    )
    assert d.fatal_error is None
    assert storage.saves == [(None, [1, 2, 3, 4, 5]), (10, [])]
    assert d.sm.applied_index == 10 and storage.snapshot is not None and storage.snapshot.meta.index == 10


# ============================================================================ the checker itself


def _sm(checker: Checker, nid: str) -> CheckedStateMachine:
    return CheckedStateMachine(checker, nid)


def test_checker_flags_two_nodes_applying_different_entries_at_one_index() -> None:
    failures: list[str] = []
    c = Checker(failures.append)
    a, b = _sm(c, "n1"), _sm(c, "n2")
    c.on_apply(a, Entry(1, 1, 0, data=b"x"))
    c.on_apply(b, Entry(1, 1, 0, data=b"x"))
    assert failures == []
    c.on_apply(a, Entry(2, 1, 0, data=b"y"))
    c.on_apply(b, Entry(2, 2, 0, data=b"z"))
    assert len(failures) == 1 and "state machine safety" in failures[0]


def test_checker_flags_gaps_and_differing_snapshots() -> None:
    failures: list[str] = []
    c = Checker(failures.append)
    a = _sm(c, "n1")
    c.on_apply(a, Entry(1, 1, 0))
    c.on_apply(a, Entry(3, 1, 0))
    assert "consecutive" in failures[-1]
    c.snapshot_bytes("n1", 5, b"one", "taken")
    c.snapshot_bytes("n2", 5, b"one", "installed")
    assert len(failures) == 1
    c.snapshot_bytes("n3", 5, b"two", "stored")
    assert "snapshots at index 5 differ" in failures[-1]
