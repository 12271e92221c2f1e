"""One chaos run end to end — the code path of both ``scripts/chaos.py`` and ``tests/test_chaos.py``.

1. a fresh cluster of real ``raftstate node`` processes in a temp dir, every peer link proxied;
2. the workload and the seeded fault schedule, concurrently, for ``duration_s``;
3. heal everything (links, pauses, clocks, dead nodes), wait for a leader;
4. read back the final state (linearizable reads, recorded in the history too);
5. run every checker and write the report folder.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftstate.client import AsyncClient
from raftstate.client.errors import RaftStateError
from raftstate.node.chaos import faults as faults_mod
from raftstate.node.chaos.checkers import CheckResult, counters, dedupe, durability, linearizable, locks, ttl
from raftstate.node.chaos.faults import Injector
from raftstate.node.chaos.history import History, Op
from raftstate.node.chaos.proxy import ProxyLayer
from raftstate.node.chaos.report import write_report
from raftstate.node.chaos.workload import Workers, WorkloadConfig
from raftstate.node.ops.local_cluster import LocalCluster
from raftstate.node.test_hooks import TestHooks

#: Cluster settings of a chaos run: defaults, but snapshots often enough to be exercised.
CHAOS_SETTINGS: dict[str, Any] = {"snapshot_threshold": 500}
HEAL_TIMEOUT_S = 90.0  #: generous: the machine is shared and every node may just have restarted


@dataclass(frozen=True, slots=True)
class RunConfig:
    seed: int
    nodes: int = 3
    duration_s: float = 60.0
    faults: tuple[str, ...] = ("kill", "pause", "partition", "clock", "restart-all")
    inject_bug: str | None = None
    report_dir: Path | None = None  #: default: a temp dir that is kept
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)


@dataclass(slots=True)
class RunResult:
    cfg: RunConfig
    results: list[CheckResult]
    fault_counts: Counter[str]
    ops: int
    report_dir: Path
    error: str | None = None  #: the run itself broke (cluster never healed, ...)

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.verdict == "pass" for r in self.results)

    @property
    def anomalies(self) -> int:
        return sum(len(r.anomalies) for r in self.results)


def replay_command(cfg: RunConfig) -> str:
    cmd = (
        f"python scripts/chaos.py --nodes {cfg.nodes} --duration {cfg.duration_s:g} "
        f"--faults {','.join(cfg.faults)} --seed {cfg.seed}"
    )
    if cfg.inject_bug:
        cmd += f" --inject-bug {cfg.inject_bug}"
    return cmd


def run(cfg: RunConfig) -> RunResult:
    report_dir = cfg.report_dir or Path(tempfile.mkdtemp(prefix=f"chaos-{cfg.seed}-"))
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chaos-cluster-") as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root, cfg.nodes, settings=CHAOS_SETTINGS)
        proxy = ProxyLayer(cluster.addr)
        history = History(report_dir / "history.jsonl")
        stop = threading.Event()
        try:
            proxy.start()
            dial_maps = proxy.write_dial_maps(root)
            clock_files = {nid: root / f"clock-{nid}" for nid in cluster.ids}
            node_env: dict[str, dict[str, str]] = {}
            for nid in cluster.ids:
                clock_files[nid].write_text("0")
                # Every node dials its peers through the proxies, reads its clock offset from a file
                # the injector rewrites, and carries the injected bug, if any (node/test_hooks.py).
                hooks = TestHooks(
                    clock_offset_file=clock_files[nid],
                    peer_dial_map=dial_maps[nid],
                    injected_bug=cfg.inject_bug or None,
                )
                node_env[nid] = hooks.to_env()
                cluster.start(nid, env=node_env[nid])
            cluster.wait_leader(timeout=HEAL_TIMEOUT_S)
            injector = Injector(cluster, proxy, clock_files, node_env, stop)
            schedule = faults_mod.plan(list(cfg.faults), cfg.duration_s, cfg.seed)
            error = None
            final: dict[str, Any] = {}
            try:
                t0 = asyncio.run(_drive(cfg, cluster, history, injector, schedule, stop))
                injector.heal_all()
                cluster.wait_leader(timeout=HEAL_TIMEOUT_S)
                final = asyncio.run(_read_back(cluster, history, HEAL_TIMEOUT_S))
            except (TimeoutError, RaftStateError) as exc:
                error = f"the cluster did not recover after healing: {exc}"
                t0 = time.monotonic()
            except Exception as exc:  # a broken run must still say so, with its seed
                error = f"the run itself failed: {type(exc).__name__}: {exc}"
                t0 = time.monotonic()
            history.close()
            results = check(history.ops, final, injector) if error is None else []
            out = RunResult(cfg, results, injector.counts, len(history.ops), report_dir, error)
            write_report(report_dir, out, history.ops, injector.windows, t0, replay_command(cfg))
            return out
        finally:
            stop.set()
            history.close()
            cluster.stop_all()
            proxy.close()
            for nid in cluster.ids:  # keep the node logs with the report
                log = root / f"{nid}.log"
                if log.exists():
                    (report_dir / f"{nid}.log").write_bytes(log.read_bytes())


async def _drive(
    cfg: RunConfig,
    cluster: LocalCluster,
    history: History,
    injector: Injector,
    schedule: list[faults_mod.PlannedFault],
    stop: threading.Event,
) -> float:
    endpoints = [f"http://{a}" for a in cluster.addr.values()]
    workers = Workers(endpoints, history, cfg.workload, cfg.seed)
    t0 = time.monotonic()
    work = asyncio.create_task(workers.run())
    faults = asyncio.create_task(asyncio.to_thread(injector.run, schedule, t0))
    await asyncio.sleep(cfg.duration_s)
    stop.set()
    workers.stop()
    await faults
    await work
    return t0


FINAL_FS = ("write", "cas", "read", "uwrite", "fenced-write", "incr", "claim")


async def _read_back(cluster: LocalCluster, history: History, timeout_s: float) -> dict[str, Any]:
    """Linearizable reads of every key the workload touched, recorded as ops of process 'final'."""
    keys = sorted({o.key for o in history.ops if o.f in FINAL_FS})
    final: dict[str, Any] = {}
    endpoints = [f"http://{a}" for a in cluster.addr.values()]
    async with AsyncClient(endpoints, timeout=timeout_s) as client:
        sem = asyncio.Semaphore(8)

        async def one(key: str) -> None:
            async with sem:
                f = "read" if key.startswith("reg:") else "final-read"
                op = history.invoke("final", f, key)
                entry = await client.get_entry(key)
                value = None if entry is None else entry.value
                history.complete(op, "ok", value)
                final[key] = value

        await asyncio.gather(*(one(k) for k in keys))
    return final


def check(ops: list[Op], final: dict[str, Any], injector: Injector) -> list[CheckResult]:
    return [
        linearizable.check(ops),
        counters.check(ops, final),
        locks.check(ops),
        dedupe.check(ops, final),
        ttl.check(ops, ahead_s=injector.ahead_s, back_s=injector.back_s),
        durability.check(ops, final),
    ]
