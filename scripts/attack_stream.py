#!/usr/bin/env python3
"""Issue 18's crafted /v1/stream frames against a real 3-node cluster (auth on, a READ token).

Starts the cluster on 127.0.0.1 in a temp dir, stores a 256 KB value, then sends each attack of
node/ops/stream_attack.py on its own stream while a thread polls the leader's /health every 10 ms.
Prints one row per attack: what came back, the slowest /health answer meanwhile (the leader's loop
stall, bounded from above), and whether any node's term moved. Also times the decode of the 4 MiB
frame in this process, unbounded (what the node did before) and bounded (what it does now).

    .venv/bin/python scripts/attack_stream.py [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import msgpack

from raftstate.node.api.codec import unpack_items
from raftstate.node.errors import Refusal
from raftstate.node.ops.local_cluster import LocalCluster, wait_until
from raftstate.node.ops.stream_attack import HealthProbe, empty_maps_frame, run_all

READ = "attack-read-token-0123456789"
WRITE = "attack-write-token-0123456789"
ENV = {"A_SECRET": "attack-cluster-secret-0123456789", "A_READ": READ, "A_WRITE": WRITE}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "A_SECRET"},
    "tokens": [
        {"name": "reader", "role": "read", "env": "A_READ"},
        {"name": "writer", "role": "write", "env": "A_WRITE"},
    ],
}
KEY = "big"


def decode_costs() -> list[tuple[str, float, float, str]]:
    """(how, seconds, peak MB, outcome) of decoding the 4 MiB frame of empty maps in-process."""
    frame = empty_maps_frame((4 << 20) - 64)
    out = []
    for how, decode in (
        ("unbounded msgpack.unpackb (before)", lambda: msgpack.unpackb(frame, raw=False)),
        (
            "unpack_items, frame cap 1000 (now)",
            lambda: unpack_items(frame, what="stream frame", max_items=1000),
        ),
    ):
        t0 = time.perf_counter()
        try:
            got = decode()
            outcome = f"{len(got)} items decoded"
        except (Refusal, ValueError) as exc:
            outcome = f"refused: {str(exc)[:60]}"
        seconds = time.perf_counter() - t0
        tracemalloc.start()  # again, for the memory (tracing slows the decode several times)
        try:
            decode()
        except (Refusal, ValueError):
            pass
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        out.append((how, seconds, peak, outcome))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--only",
        type=lambda v: {int(i) for i in v.split(",")},
        help="run only these attacks (0-based, e.g. 0,1,2)",
    )
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(Path(tmp), auth=AUTH, env=ENV, token=WRITE).running(leader_timeout=30) as c,
    ):
        leader = c.wait_leader()
        c.put_retry(KEY, "v" * (256 * 1024))

        def terms() -> dict[str, int] | None:
            sts = {n: c.status(n) for n in c.ids}
            return (
                {n: s["term"] for n, s in sts.items()}
                if all(s["leader"] == leader for s in sts.values())
                else None
            )

        before = wait_until(terms, 20, "every node to follow the leader")
        with HealthProbe(c.addr[leader]) as probe:
            results = asyncio.run(
                run_all(
                    c.url(leader, ""),
                    READ,
                    KEY,
                    probe,
                    lambda: wait_until(
                        lambda: {n: c.status(n, timeout=5)["term"] for n in c.ids}, 20, "every node's status"
                    ),
                    only=args.only,
                )
            )
        try:
            after: dict[str, int] | None = wait_until(
                lambda: {n: c.status(n, timeout=5)["term"] for n in c.ids}, 20, "every node's status"
            )
        except TimeoutError:
            after = None  # a node stopped answering: printed as such
        cut_logged = "took no answer frame" in c.log_text(leader)
    print(f"3-node cluster, auth on, READ token, leader {leader}; terms before {before}, after {after}")
    columns = (
        "attack",
        "answers (by status)",
        "frames back",
        "largest frame",
        "bytes back",
        "slowest health answer",
    )
    print("| " + " | ".join((*columns, "term moved", "connection")) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items())) or "-"
        print(
            f"| {r.name} | {r.answers} ({statuses}) | {r.frames_back} | {r.largest_frame / 1024:.0f} KiB | "
            f"{r.bytes_back / 2**20:.2f} MiB | {r.health_max_ms:.0f} ms | "
            f"{'YES' if r.terms_moved else 'no'} | {r.closed or 'open'} |"
        )
        if r.first_error:
            print(f"|   first refusal: {r.first_error} |")
    print(
        f"term changes: {'none' if before == after else f'{before} -> {after}'}; "
        f"the leader logged the cut of the non-reading client: {cut_logged}"
    )
    print("\nin-process decode of the 4 MiB frame of empty maps:")
    costs = decode_costs()
    for how, seconds, peak, outcome in costs:
        print(f"  {how}: {seconds * 1000:.0f} ms, peak {peak:.0f} MB, {outcome}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "terms_before": before,
                    "terms_after": after,
                    "attacks": [asdict(r) for r in results],
                    "decode": [
                        dict(zip(("how", "seconds", "peak_mb", "outcome"), c, strict=True)) for c in costs
                    ],
                },
                indent=2,
            )
        )
    return 0 if before == after else 1


if __name__ == "__main__":
    sys.exit(main())
