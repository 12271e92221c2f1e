"""One chaos run end to end — the code path of both ``scripts/chaos.py`` and ``tests/test_chaos.py``.

1. a fresh cluster of real ``raftstate node`` processes in a temp dir, every peer link proxied;
   with ``preload``, that many webhook markers loaded first (node/chaos/preload.py);
2. the workload and the seeded fault schedule, concurrently, for ``duration_s``;
3. heal everything (links, pauses, clocks, dead nodes), wait for a leader;
4. read back the final state (linearizable reads, recorded in the history too), a sample of the
   preloaded keys, and every replica's state digest once they all reach one applied index;
5. run every checker and write the report folder.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftstate.client import AsyncClient, protocol
from raftstate.client.errors import RaftStateError
from raftstate.node.chaos import faults as faults_mod
from raftstate.node.chaos import preload as preload_mod
from raftstate.node.chaos.checkers import (
    CheckResult,
    counters,
    dedupe,
    durability,
    linearizable,
    locks,
    preloaded,
    replicas,
    ttl,
    watch,
)
from raftstate.node.chaos.faults import Injector
from raftstate.node.chaos.history import History, Op
from raftstate.node.chaos.proxy import ProxyLayer
from raftstate.node.chaos.report import write_report
from raftstate.node.chaos.watchers import Watchers
from raftstate.node.chaos.workload import Workers, WorkloadConfig
from raftstate.node.ops.local_cluster import LocalCluster, http
from raftstate.node.test_hooks import TestHooks

#: Cluster settings of a chaos run: defaults, but snapshots often enough to be exercised: every
#: 500 entries each node checkpoints its store and compacts its log, so a node down for a few
#: seconds under the workload already needs a copy of the store to catch up.
#: ``test_hooks``: every chaos node runs with hooks (dial map, clock offset file; node/test_hooks.py)
CHAOS_SETTINGS: dict[str, Any] = {"snapshot_threshold": 500, "test_hooks": True}
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
    preload: int = 0  #: webhook markers loaded before the workload and faults start


@dataclass(slots=True)
class RunResult:
    cfg: RunConfig
    results: list[CheckResult]
    fault_counts: Counter[str]
    ops: int
    report_dir: Path
    error: str | None = None  #: the run itself broke (cluster never healed, ...)
    #: what else the run measured: the preload, each wiped node's catch-up, where faults landed
    notes: list[str] = field(default_factory=list)

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
    if cfg.preload:
        cmd += f" --preload {cfg.preload}"
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
            injector.preloaded_keys = cfg.preload
            schedule = faults_mod.plan(list(cfg.faults), cfg.duration_s, cfg.seed)
            error = None
            final: dict[str, Any] = {}
            end = _End()
            watchers = Watchers([], (), 1.0)
            t0 = time.monotonic()
            try:
                if cfg.preload:
                    end.preloaded = preload_mod.load(
                        cluster, cfg.preload, f"preload-{cfg.seed}", lambda line: print(line, flush=True)
                    )
                    end.copies_preload = faults_mod.copies_sent(cluster)
                t0, watchers = asyncio.run(_drive(cfg, cluster, history, injector, schedule, stop))
                injector.heal_all()
                cluster.wait_leader(timeout=HEAL_TIMEOUT_S)
                final = asyncio.run(_read_back(cluster, history, HEAL_TIMEOUT_S))
                if end.preloaded is not None:
                    end.sample = preload_mod.sample_keys(end.preloaded, cfg.seed)
                    end.found = asyncio.run(preload_mod.read_back(cluster, end.sample, HEAL_TIMEOUT_S))
                end.digests, end.waited_s = replica_digests(cluster, digest_timeout_s(cfg.preload))
                end.copies_total = faults_mod.copies_sent(cluster)
            except (TimeoutError, RaftStateError) as exc:
                error = f"the cluster did not recover after healing: {exc}"
            except Exception as exc:  # a broken run must still say so, with its seed
                error = f"the run itself failed: {type(exc).__name__}: {exc}"
            history.close()
            results = check(history.ops, final, injector) + end.checks() if error is None else []
            if error is None and cfg.workload.watchers:
                results.append(watch.check(watchers.logs, history.ops))
            _write_watch_logs(report_dir, watchers)
            notes = end.notes(injector) + watchers.notes()
            out = RunResult(cfg, results, injector.counts, len(history.ops), report_dir, error, notes)
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
) -> tuple[float, Watchers]:
    endpoints = [f"http://{a}" for a in cluster.addr.values()]
    workers = Workers(endpoints, history, cfg.workload, cfg.seed)
    watchers = Watchers(endpoints, cfg.workload.watchers, cfg.workload.call_timeout_s)
    t0 = time.monotonic()
    work = asyncio.create_task(workers.run())
    watching = asyncio.create_task(watchers.run())
    faults = asyncio.create_task(asyncio.to_thread(injector.run, schedule, t0))
    await asyncio.sleep(cfg.duration_s)
    stop.set()
    workers.stop()
    await faults
    await work
    await watchers.stop()  # after the last write: each watcher catches up to it first
    await watching
    return t0, watchers


def _write_watch_logs(report_dir: Path, watchers: Watchers) -> None:
    with (report_dir / "watch.jsonl").open("w", encoding="utf-8") as f:
        for wlog in watchers.logs:
            f.write(json.dumps(wlog.to_json(), default=repr) + "\n")


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


@dataclass(slots=True)
class _End:
    """What the end of a run collects beyond the history."""

    preloaded: preload_mod.Preloaded | None = None
    sample: list[str] = field(default_factory=list)  #: preloaded keys read back
    found: dict[str, Any] = field(default_factory=dict)  #: their values at the end
    digests: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    waited_s: float = 0.0
    copies_preload: tuple[int, int] = (0, 0)  #: store copies begun (count, bytes) by the preload's end
    copies_total: tuple[int, int] = (0, 0)  #: ... and by the end of the run

    def checks(self) -> list[CheckResult]:
        out = [replicas.check(self.digests, self.waited_s)]
        if self.preloaded is not None:
            written = dict.fromkeys(self.sample, self.preloaded.value)
            out.append(preloaded.check(written, self.found, self.preloaded.keys))
        return out

    def notes(self, injector: Injector) -> list[str]:
        out = [self.preloaded.describe()] if self.preloaded is not None else []
        (pn, pb), (tn, tb) = self.copies_preload, self.copies_total
        if tn:
            during = f"{pn} ({_mb(pb)}) during the preload, " if self.preloaded is not None else ""
            out.append(f"store copies sent to followers: {during}{tn - pn} ({_mb(tb - pb)}) in the run")
        out += injector.catch_ups
        out += [f"landed: {what} ({n}x)" for what, n in sorted(injector.landed.items())]
        return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def digest_timeout_s(preload: int) -> float:
    """How long the replicas may take to agree at the end: a digest hashes the whole state."""
    return 60.0 + preload / 5000


def replica_digests(
    cluster: LocalCluster, timeout_s: float
) -> tuple[dict[str, dict[str, Any] | None], float]:
    """Every node's ``/status?digest=1``, asked again until all report one applied index (or the
    time is up): the last answers (None: a node never answered) and the seconds waited."""
    started = time.monotonic()
    last: dict[str, dict[str, Any] | None] = dict.fromkeys(cluster.ids)

    def ask(nid: str) -> dict[str, Any] | None:
        try:
            url = cluster.url(nid, protocol.STATUS.path) + "?digest=1"
            st = http(protocol.STATUS.method, url, timeout=max(5.0, timeout_s / 2))
            return dict(st["state_digest"])
        except Exception:
            return last[nid]  # not now: keep what it said before

    with ThreadPoolExecutor(len(cluster.ids), thread_name_prefix="chaos-digest") as pool:
        while True:
            last = dict(zip(cluster.ids, pool.map(ask, cluster.ids), strict=True))
            seen = {d["applied_index"] for d in last.values() if d is not None}
            if None not in last.values() and len(seen) == 1:
                break
            if time.monotonic() - started > timeout_s:
                break
            time.sleep(0.2)
    return last, time.monotonic() - started


def check(ops: list[Op], final: dict[str, Any], injector: Injector) -> list[CheckResult]:
    return [
        linearizable.check(ops),
        counters.check(ops, final),
        locks.check(ops),
        dedupe.check(ops, final),
        ttl.check(ops, ahead_s=injector.ahead_s, back_s=injector.back_s),
        durability.check(ops, final),
    ]
