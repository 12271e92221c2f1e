#!/usr/bin/env python3
"""The watchers of the watch bench, in their own process: N watchers on ONE node, spread over C
client connections, and a probe writer that measures delivery latency.

    python -m raftstate.node.bench.watch_load --node http://127.0.0.1:P --endpoints URL,... \
        --watchers 1000 --connections 10 --duration 10 --probe-rate 20

Watcher ``i`` watches its own prefix ``wb:<i>:`` through the library (``AsyncClient.watch``,
polling only ``--node``), like a dashboard following one job. The probe writer sets
``wb:<i>:probe`` for a random ``i`` ``--probe-rate`` times a second (through the leader); the
latency of one probe is from the moment its write was SENT to the moment watcher ``i`` yields it
(``sent``), and from the write's acknowledgement (``acked``: after commit and apply on the leader).

Prints "ready" on stderr once every watcher has started, then ONE JSON document on stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

from raftstate.client import AsyncClient, Event, Watch
from raftstate.node.bench.loadgen import percentiles


async def run(args: argparse.Namespace) -> dict[str, Any]:
    node = args.node
    clients = [AsyncClient([node], timeout=30) for _ in range(args.connections)]
    sent: dict[int, tuple[float, float]] = {}  # probe n -> (sent, acked)
    got: list[tuple[float, float]] = []  # (delivery - sent, delivery - acked)
    delivered = 0
    watches: list[Watch] = []

    async def follow(w: Watch) -> None:
        nonlocal delivered
        async for item in w:
            if isinstance(item, Event) and item.type == "put" and isinstance(item.value, int):
                now = time.monotonic()
                delivered += 1
                s = sent.get(item.value)
                if s is not None:
                    got.append((now - s[0], now - s[1]))

    started = time.monotonic()
    for i in range(args.watchers):
        w = Watch(clients[i % len(clients)], f"wb:{i}:", None, node=node, poll_s=args.poll_s)
        watches.append(w)
    await asyncio.gather(*(w.started() for w in watches))
    start_s = time.monotonic() - started
    tasks = [asyncio.ensure_future(follow(w)) for w in watches]
    print("ready", file=sys.stderr, flush=True)
    rng = random.Random(7)
    writes: list[float] = []
    async with AsyncClient(args.endpoints.split(","), timeout=10) as writer:
        end = time.monotonic() + args.duration
        n = 0
        while time.monotonic() < end:
            n += 1
            i = rng.randrange(args.watchers)
            t0 = time.monotonic()
            sent[n] = (t0, t0)
            await writer.set(f"wb:{i}:probe", n)
            t1 = time.monotonic()
            sent[n] = (t0, t1)
            writes.append(t1 - t0)
            await asyncio.sleep(max(0.0, 1 / args.probe_rate - (t1 - t0)))
        await asyncio.sleep(1.0)  # the last probes arrive
    for w in watches:
        await w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.close()
    from_sent = percentiles([g[0] for g in got])
    from_acked = percentiles([g[1] for g in got])
    return {
        "watchers": args.watchers,
        "connections": args.connections,
        "start_s": start_s,
        "probes": n,
        "delivered": delivered,
        "latency_from_sent_ms": {k: from_sent[k] for k in ("p50", "p99", "p999")},
        "latency_from_acked_ms": {k: from_acked[k] for k in ("p50", "p99", "p999")},
        "probe_write_ms": {k: percentiles(writes)[k] for k in ("p50", "p99")},
        "cpu_s": time.process_time(),
        "wall_s": time.monotonic() - started,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", required=True, help="the one node every watcher polls")
    ap.add_argument("--endpoints", required=True, help="every node (the probe writer's client)")
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--poll-s", type=float, default=5.0, help="each poll's wait (the progress interval)")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="probe writes per second")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
