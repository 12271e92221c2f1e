#!/usr/bin/env python3
"""Benchmark raftstate (and, side by side, etcd) on this machine.

    .venv/bin/python scripts/bench.py                       # raftstate: every workload x 1,16,64,256
    .venv/bin/python scripts/bench.py --compare etcd        # the same against a 3-member etcd, ratios
    .venv/bin/python scripts/bench.py --quick               # smoke run (a few seconds per system)
    .venv/bin/python scripts/bench.py --failover 10 [--sync-client]   # kill -9 the leader every 10 s
    .venv/bin/python scripts/bench.py --scale 1000000       # 1M keys x 100 B: RSS, snapshot, restart
    .venv/bin/python scripts/bench.py --no-fault-minutes 5  # term changes under load, no faults
    .venv/bin/python scripts/bench.py --markers 1000000 --step 250000 --out m.json --plot m.png
                                   # random webhook markers through the client: rows per step,
                                   # restart, wiped follower, [--expiry-storm N] (node/bench/markers.py)
    .venv/bin/python scripts/bench.py --watchers 1000 --concurrency 64   # write rate with/without
                                   # 1,000 watchers on the leader, delivery latency, memory per watcher

Each system is a fresh 3-node cluster in a temp dir (fsync on, default timeouts) on 127.0.0.1; the
load comes from node/bench/loadgen.py in its OWN process (asyncio, aiohttp, one request per
operation, uvloop when installed). Workloads: put (100-byte values over 10k keys), linearizable
get, stale get, increment over 100 hot counters, 80/20 get/put, lock acquire+release over 100 names,
set_if_absent claims. After every increment run the counters are read back: final value must equal
the acknowledged increments (exit 1 otherwise). ``--plot FILE.png`` draws throughput vs concurrency
and the latency CDF at 64 (needs the optional ``bench`` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raftstate.node.bench.clusters import (
    ETCD_MISSING,
    EtcdCluster,
    etcd_binary,
    raftstate_endpoints,
    wait_ready,
)
from raftstate.node.bench.report import check_counters, plot, print_table
from raftstate.node.bench.targets import WORKLOADS
from raftstate.node.ops.local_cluster import LocalCluster

#: the load generator runs in its own process (node/bench/loadgen.py)
LOADGEN = ("-m", "raftstate.node.bench.loadgen")


def loadgen_cmd(
    system: str,
    endpoints: list[str],
    workload: str,
    conc: int,
    args: argparse.Namespace,
    run: str,
    *extra: str,
) -> list[str]:
    return [
        sys.executable,
        *LOADGEN,
        "--system",
        system,
        "--endpoints",
        ",".join(endpoints),
        "--workload",
        workload,
        "--concurrency",
        str(conc),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--run",
        run,
        *extra,
    ]


def run_loadgen(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def run_matrix(system: str, endpoints: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for wl in args.workloads:
        for conc in args.concurrency:
            res = run_loadgen(
                loadgen_cmd(system, endpoints, wl, conc, args, f"{wl}{conc}t{int(time.time())}")
            )
            results.append(res)
            errs = sum(res["errors"].values())
            print(
                f"  {system:9} {wl:9} c={conc:<3} {res['ops_per_s']:8.0f} ops/s"
                f"  p50 {res['p50'] or 0:6.1f} ms"
                f"  p99 {res['p99'] or 0:7.1f} ms  errors {errs}",
                flush=True,
            )
    return results


def bench_raftstate(args: argparse.Namespace, system: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="raftstate-bench-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        return run_matrix(system, raftstate_endpoints(c), args)


def bench_etcd(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as tmp, EtcdCluster(Path(tmp)) as e:
        e.start()
        return run_matrix("etcd", e.endpoints, args)


# --------------------------------------------------------------------------- failover


def bench_failover(args: argparse.Namespace) -> int:
    kills, every = args.failover, args.kill_every
    args.duration, args.warmup = kills * every + 3, 0.0
    with tempfile.TemporaryDirectory(prefix="raftstate-failover-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        extra = ["--timeline", "--op-timeout", "10"] + (["--client", "sync"] if args.sync_client else [])
        gen = subprocess.Popen(
            loadgen_cmd(
                "raftstate-stream",
                raftstate_endpoints(c),
                "put",
                args.failover_concurrency,
                args,
                "fo",
                *extra,
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        kill_times: list[tuple[str, float]] = []
        for _ in range(kills):
            time.sleep(every - 3)
            leader = c.wait_leader()
            t = time.monotonic()
            c.kill(leader)
            kill_times.append((leader, t))
            time.sleep(3)
            c.start(leader)
        stdout, _ = gen.communicate(timeout=120)
    res = json.loads(stdout)
    gaps = []
    for k, (leader, t_kill) in enumerate(kill_times):
        acks = [t1 for t0, t1 in res["timeline"] if t0 > t_kill]
        gap = (min(acks) - t_kill) if acks else float("inf")
        gaps.append(gap)
        print(
            f"kill {k + 1:2d}: leader {leader} -> first write sent after the kill"
            f" acked after {gap * 1000:6.0f} ms"
        )
    client = "blocking raftstate.client.Client" if args.sync_client else "asyncio load generator, stream"
    print(f"\nfailover ({client}, {args.failover_concurrency} concurrent puts, {kills} kills):")
    print(
        f"  write unavailability median {statistics.median(gaps) * 1000:.0f} ms,"
        f" worst {max(gaps) * 1000:.0f} ms"
    )
    print(f"  errors during the run: {res['errors']}")
    return 0


# --------------------------------------------------------------------------- no faults


def bench_no_fault(args: argparse.Namespace) -> int:
    args.duration, args.warmup = args.no_fault_minutes * 60, 0.0
    with tempfile.TemporaryDirectory(prefix="raftstate-nofault-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        before = {n: c.status(n)["term"] for n in c.ids}
        res = run_loadgen(loadgen_cmd("raftstate", raftstate_endpoints(c), "mixed", 64, args, "nf"))
        after = {n: c.status(n)["term"] for n in c.ids}
    changes = max(after.values()) - max(before.values())
    print(
        f"{args.no_fault_minutes} min of 80/20 get/put at 64 concurrent: {res['ops_per_s']:.0f} ops/s, "
        f"p99 {res['p99']:.1f} ms, errors {res['errors']}"
    )
    print(f"term changes under load: {changes} (terms before {before}, after {after})")
    return 0 if changes == 0 else 1


# --------------------------------------------------------------------------- scale


def bench_scale(args: argparse.Namespace) -> int:
    from raftstate.node.bench.scale import run_scale

    return run_scale(args, loadgen_cmd, run_loadgen)


def bench_markers(args: argparse.Namespace) -> int:
    from raftstate.node.bench.markers import run_markers

    return run_markers(args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=["etcd"], help="also run every workload against etcd")
    ap.add_argument(
        "--protocols",
        default="stream,http",
        help="raftstate client protocols to run: stream (/v1/stream, many ops per connection), http",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: concurrency 1 and 16, short runs")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--concurrency", help="comma-separated (default 1,16,64,256; --markers: one, 64)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--plot", type=Path, help="write throughput/latency plots to this PNG")
    ap.add_argument("--json", "--out", type=Path, dest="json", help="write every result to this JSON file")
    ap.add_argument("--failover", type=int, metavar="KILLS", help="kill -9 the leader KILLS times under load")
    ap.add_argument("--kill-every", type=float, default=10.0)
    ap.add_argument("--failover-concurrency", type=int, default=16)
    ap.add_argument("--sync-client", action="store_true", help="failover seen by the blocking library client")
    ap.add_argument(
        "--scale", type=int, metavar="KEYS", help="memory/snapshot/restart with KEYS keys of 100 B"
    )
    ap.add_argument("--no-fault-minutes", type=float, help="count term changes under load without faults")
    wg = ap.add_argument_group("--watchers: N watchers on the leader while put runs")
    wg.add_argument("--watchers", type=int, metavar="N", help="write rate with/without N watchers; latency")
    wg.add_argument("--watch-connections", type=int, default=10, help="client connections the watchers share")
    wg.add_argument("--watch-poll-s", type=float, default=5.0, help="each watch poll's wait (default 5)")
    mk = ap.add_argument_group("--markers: random webhook markers through the client library")
    mk.add_argument("--markers", type=int, metavar="KEYS", help="write KEYS random markers, a row per --step")
    mk.add_argument("--step", type=int, default=500_000, help="keys per row (default 500000)")
    mk.add_argument("--fill-minutes", type=float, help="stop the fill after this long, measure the rest")
    mk.add_argument("--value-bytes", type=int, default=60, help="marker value size (default 60)")
    mk.add_argument("--ttl", type=float, default=7 * 86400, help="marker ttl in seconds (default 7 days)")
    mk.add_argument(
        "--steady-rate", type=float, default=200.0, help="puts/s of the steady load (default 200)"
    )
    mk.add_argument("--steady-s", type=float, default=10.0, help="steady seconds measured before a fault")
    mk.add_argument("--catchup-timeout", type=float, default=1800.0, help="seconds a wiped follower may take")
    mk.add_argument("--expiry-storm", type=int, default=0, metavar="N", help="N markers expiring at once")
    mk.add_argument("--storm-expire-after", type=float, help="seconds from the storm's start to its expiry")
    mk.add_argument("--storm-timeout", type=float, default=3600.0, help="seconds the sweep may take")
    args = ap.parse_args()
    args.workloads = args.workloads.split(",")
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.markers:
        args.marker_concurrency = int(args.concurrency or 64)
        return bench_markers(args)
    args.concurrency = [int(x) for x in (args.concurrency or "1,16,64,256").split(",")]
    if args.quick:
        args.concurrency, args.duration, args.warmup = [1, 16], 0.5, 0.1
    if args.watchers:
        from raftstate.node.bench.watch_bench import run_watch_bench

        return run_watch_bench(args, loadgen_cmd, run_loadgen)
    if args.failover:
        return bench_failover(args)
    if args.no_fault_minutes:
        return bench_no_fault(args)
    if args.scale:
        return bench_scale(args)

    results = {}
    for proto in args.protocols.split(","):
        system = {"stream": "raftstate-stream", "http": "raftstate"}[proto]
        results[system] = bench_raftstate(args, system)
    if args.compare == "etcd":
        if etcd_binary() is None:
            print(ETCD_MISSING)
        else:
            results["etcd"] = bench_etcd(args)
    print()
    print_table(results, args.workloads, args.concurrency)
    ok = check_counters(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
