#!/usr/bin/env python3
"""The load generator: one process, asyncio, N concurrent workers running one workload.

    python -m raftstate.node.bench.loadgen --system raftstate --endpoints http://127.0.0.1:P1,... \
        --workload put --concurrency 64 --duration 5 --run r1

Prints ONE JSON document on stdout: ops, errors (by code), busy, retries, latencies (percentiles
and a CDF sample), and for ``incr`` the acknowledged increments per counter next to the values
read back afterwards (so the caller can check no acknowledged increment was lost).
``--timeline`` adds (sent, acked) monotonic times of every successful op — CLOCK_MONOTONIC is
system-wide on Linux, so the parent can line them up with its kill -9 times (failover runs).
``--client sync`` drives raftstate through the blocking ``raftstate.client.Client`` from N
threads instead (what a worker using the library sees, leader following and retries included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from typing import Any

import aiohttp

from raftstate.node.bench.targets import EtcdTarget, OpError, RaftstateTarget, Target


def percentiles(lat_s: list[float]) -> dict[str, Any]:
    xs = sorted(lat_s)
    if not xs:
        return {"p50": None, "p99": None, "p999": None, "cdf": []}

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    step = max(1, len(xs) // 200)
    return {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "cdf": [x * 1000 for x in xs[::step]]}


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    endpoints = args.endpoints.split(",")
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=args.op_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        target: Target
        if args.system == "etcd":
            target = EtcdTarget(session, endpoints, args.run)
            await target.find_leader()
        else:
            target = RaftstateTarget(session, endpoints, args.run, stream=args.system == "raftstate-stream")
            target.fill_keys = args.keys
        op = getattr(target, args.workload)
        lat: list[float] = []
        timeline: list[tuple[float, float]] = []
        errors: dict[str, int] = {}
        counts = {"ok": 0, "busy": 0}
        t_start = time.monotonic()
        t_measure = t_start + args.warmup
        t_end = t_measure + args.duration

        async def worker(i: int) -> None:
            rng = random.Random(f"{args.run}-{i}")
            while True:
                t0 = time.monotonic()
                if t0 >= t_end:
                    return
                try:
                    outcome = await op(rng)
                except OpError as exc:
                    if t0 >= t_measure:
                        errors[exc.code] = errors.get(exc.code, 0) + 1
                    await asyncio.sleep(0.01)  # a down node refuses at once: don't spin
                    continue
                if outcome == "done":
                    return
                t1 = time.monotonic()
                if t0 >= t_measure:
                    counts[outcome] += 1
                    lat.append(t1 - t0)
                    if args.timeline:
                        timeline.append((t0, t1))

        retries_before = target.retries
        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
        elapsed = max(1e-9, min(time.monotonic(), t_end) - t_measure)
        result: dict[str, Any] = {
            "system": args.system,
            "workload": args.workload,
            "concurrency": args.concurrency,
            "ops": counts["ok"] + counts["busy"],
            "busy": counts["busy"],
            "elapsed_s": elapsed,
            "ops_per_s": (counts["ok"] + counts["busy"]) / elapsed if elapsed > 0 else 0.0,
            "errors": errors,
            "retries": target.retries - retries_before,
            **percentiles(lat),
        }
        if args.workload == "incr":
            values = await target.counter_values()
            result["counters"] = {
                "acked": sum(target.acked.values()),
                "final": sum(values.values()),
                "unknown": target.unknown,
                "mismatched": [k for k, n in target.acked.items() if values.get(k) != n],
            }
        if args.timeline:
            result["timeline"] = timeline
        return result


def run_sync_client(args: argparse.Namespace) -> dict[str, Any]:
    """Blocking library client from N threads: puts only (the failover view of a worker)."""
    from raftstate.client import Client

    lat: list[float] = []
    timeline: list[tuple[float, float]] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    t_measure = time.monotonic() + args.warmup
    t_end = t_measure + args.duration
    with Client(args.endpoints.split(","), timeout=args.op_timeout) as client:

        def worker(i: int) -> None:
            rng = random.Random(f"{args.run}-{i}")
            while (t0 := time.monotonic()) < t_end:
                try:
                    client.set(f"k{rng.randrange(10_000)}", "v" * 100)
                except Exception as exc:
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                t1 = time.monotonic()
                if t0 >= t_measure:
                    with lock:
                        lat.append(t1 - t0)
                        timeline.append((t0, t1))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = args.duration
    out: dict[str, Any] = {
        "system": "raftstate-sync-client",
        "workload": "put",
        "concurrency": args.concurrency,
        "ops": len(lat),
        "busy": 0,
        "elapsed_s": elapsed,
        "ops_per_s": len(lat) / elapsed,
        "errors": errors,
        "retries": 0,
        **percentiles(lat),
    }
    if args.timeline:
        out["timeline"] = timeline
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=["raftstate", "raftstate-stream", "etcd"], required=True)
    ap.add_argument("--endpoints", required=True, help="comma-separated base URLs")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--op-timeout", type=float, default=10.0)
    ap.add_argument("--run", default="r")
    ap.add_argument("--timeline", action="store_true")
    ap.add_argument("--keys", type=int, default=0, help="the fill and markers workloads: how many keys")
    ap.add_argument("--client", choices=["http", "sync"], default="http")
    args = ap.parse_args()
    if args.client == "sync":
        result = run_sync_client(args)
    else:
        try:
            import uvloop  # optional: the load generator should not be the bottleneck

            result = uvloop.run(run_async(args))
        except ImportError:
            result = asyncio.run(run_async(args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
