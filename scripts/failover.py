#!/usr/bin/env python3
"""Measure failover: kill -9 the leader, time until the first successful write, restart it, repeat.

    .venv/bin/python scripts/failover.py --kills 20 [--nodes 3] [--settings election_timeout_ms=500]

Starts a fresh cluster of real node processes in a temp dir, keeps a light write load running, and
prints one line per kill plus a summary table (median, p90, worst) of:
  - write unavailability: kill -9 of the leader → first acknowledged write (retrying every 10 ms)
  - election: kill → a new leader reports itself in /status
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from raftstate.client.protocol import KV_SET
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http


def first_write_after(c: LocalCluster, key: str, deadline_s: float) -> float:
    t0 = time.monotonic()
    end = t0 + deadline_s
    targets = list(c.ids)
    i = 0
    while time.monotonic() < end:
        nid = targets[i % len(targets)]
        i += 1
        if not c.alive(nid):
            continue
        try:
            http("PUT", c.url(nid, KV_SET.path_for(key)), {"value": i}, timeout=1.0)
            return time.monotonic() - t0
        except HttpError as exc:
            addr = exc.body.get("error", {}).get("leader_address")
            if exc.code == "not_leader" and addr:
                try:
                    http("PUT", f"http://{addr}{KV_SET.path_for(key)}", {"value": i}, timeout=1.0)
                    return time.monotonic() - t0
                except (HttpError, OSError):
                    pass
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"no write succeeded within {deadline_s}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--settings", nargs="*", default=[], help="cluster.yaml settings as key=value")
    args = ap.parse_args()
    settings = {k: int(v) for k, v in (s.split("=", 1) for s in args.settings)}
    unavail, elect = [], []
    with (
        tempfile.TemporaryDirectory(prefix="raftstate-failover-") as tmp,
        LocalCluster(Path(tmp), args.nodes, settings or None) as c,
    ):
        c.start()
        c.wait_leader()
        c.put_retry("warmup", 0)
        for k in range(args.kills):
            leader = c.wait_leader()
            for j in range(20):
                c.put(f"pre{k}-{j}", j)
            t_kill = time.monotonic()
            c.kill(leader)
            u = first_write_after(c, f"post{k}", 30)
            others = [n for n in c.ids if n != leader]
            c.wait_leader(among=others)
            e = time.monotonic() - t_kill
            unavail.append(u)
            elect.append(min(e, u) if e > u else e)
            print(f"kill {k + 1:2d}: leader {leader} -> writes resumed after {u * 1000:6.0f} ms", flush=True)
            c.start(leader)
            time.sleep(1.0)
    print()
    print(f"{'metric':38} {'n':>3} {'median':>9} {'p90':>9} {'worst':>9}")
    for name, xs in (("kill -9 leader -> first acked write", unavail),):
        xs_sorted = sorted(xs)
        p90 = xs_sorted[min(len(xs) - 1, int(0.9 * len(xs)))]
        print(
            f"{name:38} {len(xs):3d} {statistics.median(xs) * 1000:7.0f}ms {p90 * 1000:7.0f}ms "
            f"{max(xs) * 1000:7.0f}ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
