"""``scripts/bench.py --watchers N``: what N watchers on one node cost the write path (docs/performance.md).

One fresh 3-node cluster (127.0.0.1). In one run, so that the shared machine's load hits all alike:

    A  the load generator alone: ``put`` as fast as it can at --concurrency      (write rate, baseline)
    B  the same while N watchers (node/bench/watch_load.py, their own process) each follow their
       own prefix on the LEADER over --watch-connections connections, and a probe writer sets a
       watched key 20 times a second                                             (write rate, latency)
    C  the load generator alone again                                            (baseline, after)

Reported: the write rate of B against the mean of A and C (the target is >= 85 %), delivery
latency p50/p99 (write sent → watcher has it; write acknowledged → watcher has it), the leader's
RssAnon with the watchers parked minus before them, per watcher, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftstate.node.bench.clusters import raftstate_endpoints, wait_ready
from raftstate.node.bench.scale import proc_mb
from raftstate.node.ops.local_cluster import LocalCluster

LoadgenCmd = Callable[..., list[str]]
RunLoadgen = Callable[[list[str]], dict[str, Any]]
READY_TIMEOUT_S = 180.0


def run_watch_bench(args: argparse.Namespace, loadgen_cmd: LoadgenCmd, run_loadgen: RunLoadgen) -> int:
    n, conns = args.watchers, args.watch_connections
    conc = args.concurrency[0] if isinstance(args.concurrency, list) else 64
    with tempfile.TemporaryDirectory(prefix="raftstate-watch-bench-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        endpoints = raftstate_endpoints(c)
        leader = c.wait_leader()
        pid = c.procs[leader].pid

        def load(run: str) -> dict[str, Any]:
            cpu0, t0 = _cpu_s(pid), time.monotonic()
            res = run_loadgen(loadgen_cmd("raftstate-stream", endpoints, "put", conc, args, run))
            res["leader_cpu_share"] = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
            print(
                f"  {run:12} put c={conc} {res['ops_per_s']:8.0f} ops/s  p99 {res['p99'] or 0:6.1f} ms  "
                f"leader CPU {res['leader_cpu_share']:.0%} of a core",
                flush=True,
            )
            return res

        a = load(f"alone-a{int(time.time())}")
        rss_before = proc_mb(pid, "RssAnon")["RssAnon"]
        watchers = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftstate.node.bench.watch_load",
                "--node",
                f"http://{c.addr[leader]}",
                "--endpoints",
                ",".join(endpoints),
                "--watchers",
                str(n),
                "--connections",
                str(conns),
                "--duration",
                str(args.duration + args.warmup + 4),
                "--poll-s",
                str(args.watch_poll_s),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_ready(watchers)
            time.sleep(1.0)
            rss_parked = proc_mb(pid, "RssAnon")["RssAnon"]
            b = load(f"watched{int(time.time())}")
            out, err = watchers.communicate(timeout=args.duration + 120)
        finally:
            if watchers.poll() is None:
                watchers.kill()
        if watchers.returncode != 0:
            raise RuntimeError(f"the watchers process failed ({watchers.returncode}): {err[-2000:]}")
        w: dict[str, Any] = json.loads(out)
        cc = load(f"alone-c{int(time.time())}")
    base = (a["ops_per_s"] + cc["ops_per_s"]) / 2
    ratio = b["ops_per_s"] / base if base else float("nan")
    per_watcher_kb = (rss_parked - rss_before) * 1024 / n
    doc = {
        "watchers": n,
        "connections": conns,
        "concurrency": conc,
        "poll_s": args.watch_poll_s,
        "alone_before": a["ops_per_s"],
        "with_watchers": b["ops_per_s"],
        "alone_after": cc["ops_per_s"],
        "ratio": ratio,
        "rss_anon_mb_before": rss_before,
        "rss_anon_mb_parked": rss_parked,
        "rss_kb_per_watcher": per_watcher_kb,
        "loadavg": os.getloadavg(),
        **w,
    }
    ls, la = w["latency_from_sent_ms"], w["latency_from_acked_ms"]
    print()
    print(
        f"watch bench: {n} watchers on the leader over {conns} connections (poll wait "
        f"{args.watch_poll_s:g} s), put at c={conc}"
    )
    print(f"  write rate alone {a['ops_per_s']:.0f} / {cc['ops_per_s']:.0f} ops/s (before/after), ", end="")
    print(f"with watchers {b['ops_per_s']:.0f} ops/s: {ratio:.0%} (target >= 85%)")
    print(f"  delivery, write sent → watcher:  p50 {ls['p50'] or 0:.1f} ms  p99 {ls['p99'] or 0:.1f} ms")
    print(f"  delivery, write acked → watcher: p50 {la['p50'] or 0:.1f} ms  p99 {la['p99'] or 0:.1f} ms")
    print(f"  probes {w['probes']}, delivered {w['delivered']}; {n} watches started in {w['start_s']:.1f} s")
    print(
        f"  leader RssAnon {rss_before:.1f} → {rss_parked:.1f} MB with the watchers parked: "
        f"{per_watcher_kb:.1f} KB per watcher"
    )
    print(f"  the watchers' process used {w['cpu_s']:.1f} s of CPU in {w['wall_s']:.1f} s (same machine)")
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(p: subprocess.Popen[str]) -> None:
    assert p.stderr is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            raise RuntimeError(f"the watchers process ended before it was ready (exit {p.wait()})")
        if line.strip() == "ready":
            return
    raise RuntimeError(f"the watchers did not start within {READY_TIMEOUT_S:g}s")
