#!/usr/bin/env python3
"""What a big snapshot costs a node while it is taken (issue 7), measured in isolation:

    .venv/bin/python scripts/snapshot_stall.py storage            # log appends during a 116 MB snapshot write
    .venv/bin/python scripts/snapshot_stall.py loop --keys 1000000  # event-loop lag while a snapshot is built

``storage``: one thread appends one entry per fsync to a DiskStorage while another calls
``save_snapshot`` with 116 MB: prints the snapshot write time and the appends' p50/max latency
(with the mutex held across the write, max ~= the whole write).
``loop``: a KVStateMachine of N keys of 100 B; an asyncio task sleeps 10 ms in a loop while the
snapshot is built in a thread as the node does (``snapshot_later`` on the loop, the build in
``asyncio.to_thread``): prints the loop's max/p50 lag, and every full (generation 2) garbage
collection with its duration — a pause of the whole process, heartbeats included.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import threading
import time
from typing import Any

from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.storage.store import DiskStorage
from raftstate.raft.messages import Entry, Membership, SnapshotMeta


def storage_stall(size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="raftstate-stall-") as d:
        s = DiskStorage(d, node_id="n1")
        s.load()
        s.save(None, [Entry(i, 1, time_ms=i, data=b"x" * 100) for i in range(1, 1001)], None)
        lat: list[float] = []
        stop = threading.Event()

        def appender() -> None:
            index = 1001
            while not stop.is_set():
                t = time.perf_counter()
                s.save(None, [Entry(index, 1, time_ms=index, data=b"x" * 100)], None)
                lat.append(time.perf_counter() - t)
                index += 1

        th = threading.Thread(target=appender)
        th.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        s.save_snapshot(SnapshotMeta(1000, 1, Membership(frozenset({"n1"})), time_ms=0), b"d" * size)
        write_s = time.perf_counter() - t0
        time.sleep(0.5)
        stop.set()
        th.join()
        s.close()
    lat.sort()
    print(
        f"snapshot write {write_s * 1000:.0f} ms ({size / 1e6:.0f} MB); {len(lat)} appends meanwhile: "
        f"p50 {lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.0f} ms"
    )


def loop_lag(keys: int) -> None:
    sm = KVStateMachine()
    for i in range(1, keys + 1):
        sm.apply(i, 0, encode_command("set", key=f"key-{i:08d}", value="v" * 100))
    full_gcs: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            full_gcs.append(time.perf_counter() - started[0])

    async def main() -> None:
        lags: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t - 0.01)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.5)
        lags.clear()
        gc.callbacks.append(on_gc)
        t0 = time.perf_counter()
        build = sm.snapshot_later()
        t1 = time.perf_counter()
        data = await asyncio.to_thread(build)
        t2 = time.perf_counter()
        gc.callbacks.remove(on_gc)
        done.set()
        await task
        lags.sort()
        print(
            f"{keys} keys: snapshot_later on the loop {(t1 - t0) * 1000:.0f} ms; build in a thread "
            f"{t2 - t1:.1f} s ({len(data) / 1e6:.0f} MB); loop lag max {lags[-1] * 1000:.0f} ms, "
            f"p50 {lags[len(lags) // 2] * 1000:.1f} ms; full GCs meanwhile: "
            f"{', '.join(f'{g * 1000:.0f} ms' for g in full_gcs) or 'none'}"
        )

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["storage", "loop"])
    ap.add_argument("--size", type=int, default=116_000_000, help="storage: snapshot bytes")
    ap.add_argument("--keys", type=int, default=1_000_000, help="loop: keys in the state machine")
    args = ap.parse_args()
    if args.what == "storage":
        storage_stall(args.size)
    else:
        loop_lag(args.keys)


if __name__ == "__main__":
    main()
