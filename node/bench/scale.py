"""``bench.py --scale N``: N keys of 100 bytes in a fresh 3-node cluster, then per node: RSS,
snapshot size and write time (from the node's log), restore time of that snapshot (decode +
rebuild, timed here), restart-to-ready after kill -9 of a follower; plus term changes (elections)
while loading."""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftstate.client.protocol import READY
from raftstate.node.bench.clusters import raftstate_endpoints, wait_ready
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

_SNAP_LOG = re.compile(r"took a snapshot at index (\d+) \((\d+) bytes, (\d+) ms\)")


def proc_mb(pid: int, *fields: str) -> dict[str, float]:
    """Memory lines of /proc/<pid>/status in MB (``VmRSS``, ``RssAnon``, ``RssFile``; nan if absent)."""
    found = dict.fromkeys(fields, float("nan"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in found:
            found[name] = int(rest.split()[0]) / 1024
    return found


def rss_mb(pid: int) -> float:
    return proc_mb(pid, "VmRSS")["VmRSS"]


def newest_snapshot(data_dir: Path) -> Path | None:
    snaps = sorted((data_dir / "snapshots").glob("snap-*.snap"))
    return snaps[-1] if snaps else None


def restore_seconds(path: Path) -> float:
    """What a restart costs to get the state back: decoding the snapshot (state in memory), or
    opening the state store (a snapshot that only describes it, issue 14)."""
    from raftstate.node.state.machine import KVStateMachine
    from raftstate.node.state.tables import StateTables
    from raftstate.node.storage.snapshot_store import SnapshotStore
    from raftstate.node.storage.state_file import StoreDescriptor

    store = SnapshotStore(path.parent)
    ref = store.list()[-1]
    t0 = time.perf_counter()
    _, data = store.read(ref)
    if StoreDescriptor.decode(data) is not None:
        # Not StateFile(): its constructor tidies the (live) node's state dir.
        sm = KVStateMachine(StateTables(sqlite3.connect(path.parent.parent / "state" / "state.db")))
        sm.get("any")
        sm.tables.conn.close()
    else:
        KVStateMachine().restore(data)
    return time.perf_counter() - t0


def caught_up(c: LocalCluster, nid: str, index: int) -> bool:
    st = c.status(nid)
    ready = http("GET", c.url(nid, READY.path), timeout=1.0)
    return bool(ready.get("ready")) and st["applied_index"] >= index


def max_term(c: LocalCluster) -> int:
    """The highest term any running node reports (a node too busy to answer within 2 s is skipped)."""
    terms = []
    for nid in c.ids:
        if c.alive(nid):
            try:
                terms.append(int(c.status(nid, timeout=2.0)["term"]))
            except (OSError, HttpError, ValueError):
                continue
    if not terms:
        raise RuntimeError(f"no node of {c.ids} answered /status")
    return max(terms)


def wait_all_applied(c: LocalCluster, timeout: float) -> None:
    """Until every node has applied what the leader had committed when this was called."""
    commit = c.status(c.wait_leader())["commit_index"]
    for nid in c.ids:

        def applied(nid: str = nid) -> bool:
            return bool(c.status(nid)["applied_index"] >= commit)

        wait_until(applied, timeout, f"{nid} applied")


def restart_to_ready(c: LocalCluster, timeout: float = 300.0) -> tuple[str, float]:
    """kill -9 of a follower, restart it; seconds until its /ready says ready and its applied
    index reaches the leader's commit index at the kill. Returns (the follower, seconds)."""
    leader = c.wait_leader()
    follower = next(x for x in c.ids if x != leader)
    c.kill(follower)
    commit = c.status(leader)["commit_index"]
    t0 = time.monotonic()
    c.start(follower)
    wait_until(lambda: caught_up(c, follower, commit), timeout, f"{follower} ready", interval=0.05)
    return follower, time.monotonic() - t0


def run_scale(
    args: argparse.Namespace,
    loadgen_cmd: Callable[..., list[str]],
    run_loadgen: Callable[[list[str]], dict[str, Any]],
) -> int:
    n = args.scale
    with tempfile.TemporaryDirectory(prefix="raftstate-scale-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        terms0 = max_term(c)
        args.duration, args.warmup = 3600.0, 0.0
        t0 = time.monotonic()
        res = run_loadgen(
            loadgen_cmd(
                "raftstate-stream", raftstate_endpoints(c), "fill", 256, args, "scale", "--keys", str(n)
            )
        )
        load_s = time.monotonic() - t0
        print(
            f"loaded {res['ops']} keys of 100 B in {load_s:.0f} s ({res['ops'] / load_s:.0f}/s), "
            f"errors {res['errors']}",
            flush=True,
        )
        wait_all_applied(c, 120)
        time.sleep(3)  # let a snapshot in flight finish
        terms1 = max_term(c)
        print(f"term changes while loading: {terms1 - terms0}")
        print(
            f"{'node':5} {'role':9} {'RSS MB':>8} {'snapshot MB':>12} {'snap write ms':>14} {'restore s':>10}"
        )
        for nid in c.ids:
            st = c.status(nid)
            snap = newest_snapshot(Path(tmp) / "data" / nid)
            writes = _SNAP_LOG.findall(c.log_text(nid))
            write_ms = writes[-1][2] if writes else "-"
            size = f"{snap.stat().st_size / 1e6:.1f}" if snap else "-"
            restore = f"{restore_seconds(snap):.2f}" if snap else "-"
            print(
                f"{nid:5} {st['role']:9} {rss_mb(c.procs[nid].pid):8.0f} {size:>12} {write_ms:>14}"
                f" {restore:>10}"
            )
        follower, seconds = restart_to_ready(c, 120)
        print(
            f"restart to ready (kill -9 of follower {follower}, restart, /ready and caught up): "
            f"{seconds:.2f} s"
        )
        print(f"RSS of {follower} after restart: {rss_mb(c.procs[follower].pid):.0f} MB")
    sys.stdout.flush()
    return 0
