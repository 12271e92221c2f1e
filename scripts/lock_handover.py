#!/usr/bin/env python3
"""Measure lock hand-over latency: the holder releases → the next waiter holds the lock.

    .venv/bin/python scripts/lock_handover.py [--handovers 50] [--nodes 3]

Starts a fresh cluster of real node processes in a temp dir (127.0.0.1). Two clients take turns on
one lock: while A holds it, B waits in ``lock()``; A releases; B holds it; then the roles swap. The
latency of one hand-over is from the moment A starts its release call to the moment B's ``lock()``
returns. Both modes run in the same cluster, alternating blocks of 10 so that load on a shared
machine hits both alike:

    poll    the waiter polls acquire with jittered backoff (50 ms, growing) — before watch
    watch   the waiter is woken by the lock_release event of its watch (client/_waiter.py)

Prints one table (p50 / p99 / max in ms per mode).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from raftstate.client import AsyncClient
from raftstate.client import _waiter as waiter_mode
from raftstate.node.ops.local_cluster import LocalCluster

LOCK = "handover"
BLOCK = 10


async def one_block(a: AsyncClient, b: AsyncClient, n: int) -> list[float]:
    """``n`` hand-overs between a and b; the latency of each in seconds."""
    out: list[float] = []
    holder = await a.lock(LOCK, ttl=10).__aenter__()
    clients = [a, b]
    for i in range(n):
        nxt = clients[(i + 1) % 2]
        waiting = asyncio.ensure_future(nxt.lock(LOCK, ttl=10).__aenter__())
        await asyncio.sleep(0.25)  # the waiter is refused and waits (polling, or watching)
        assert not waiting.done(), "the waiter got a held lock"
        t0 = time.monotonic()
        await holder.release()
        holder = await waiting
        out.append(time.monotonic() - t0)
    await holder.release()
    return out


async def measure(endpoints: list[str], handovers: int) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"poll": [], "watch": []}
    async with AsyncClient(endpoints, owner="a") as a, AsyncClient(endpoints, owner="b") as b:
        await a.wait_for_leader()
        done = 0
        while done < handovers:
            n = min(BLOCK, handovers - done)
            for mode in ("poll", "watch"):
                waiter_mode.USE_WATCH = mode == "watch"
                lat[mode] += await one_block(a, b, n)
            done += n
    return lat


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handovers", type=int, default=50, help="hand-overs per mode (default 50)")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="handover-") as tmp:
        cluster = LocalCluster(Path(tmp), args.nodes)
        with cluster.running():
            endpoints = [f"http://{a}" for a in cluster.addr.values()]
            lat = asyncio.run(measure(endpoints, args.handovers))
    print(f"lock hand-over latency, {args.handovers} hand-overs per mode, {args.nodes} nodes")
    print(f"{'mode':<6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for mode, xs in lat.items():
        print(
            f"{mode:<6} {pct(xs, 0.5):8.1f} {pct(xs, 0.99):8.1f} {max(xs) * 1000:8.1f} "
            f"{statistics.fmean(xs) * 1000:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
