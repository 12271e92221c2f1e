#!/usr/bin/env python3
"""Restart every node in turn while a client workload runs; report the longest write stall.

    .venv/bin/python scripts/rolling_restart.py --config cluster.yaml   # a running cluster
    .venv/bin/python scripts/rolling_restart.py --nodes 5 [--rounds 2]  # its own temp cluster

Each node in turn (followers first, the leader last): SIGTERM (a leader hands leadership over
first), wait for the process to exit, start it again, wait until it answers /ready and has applied
everything the leader had committed when it came back, then pause --settle seconds.

``--config``: the nodes of that file on THIS host. A node's PID is read from its data dir's LOCK
file (held by the running node); it is restarted as ``python -m raftstate.node node --config FILE
--id ID`` in a new session, its output appended to ``<data_dir>/../<id>.out``. (Nodes on other
hosts: run the same loop with your service manager; the waits are what matter.)

On a secured cluster the script sends the token of --token / $RAFTSTATE_TOKEN (read role is enough
for its /status and /ready calls; the workload increments need write) and uses https with the CA
of --ca / $RAFTSTATE_CA or the file's ``tls.ca`` (node/security/node_access.py, as the operator commands).

The workload is the real client library (``raftstate.client.Client``): one thread of increments
with exactly-once sessions. Reported: writes acknowledged, failed writes (any exception), the
longest stall (the largest gap between two consecutive acknowledged writes), worst write latency,
and that the counter equals the number of acknowledged increments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftstate.client import Client
from raftstate.client import protocol as p
from raftstate.node.config import ClusterConfig, load_config
from raftstate.node.ops.admin_http import AdminError, call
from raftstate.node.ops.local_cluster import LocalCluster, wait_until
from raftstate.node.ops.workload import Workload
from raftstate.node.security.node_access import NodeAccess

PLAIN = NodeAccess()


def _get(addr: str, op: p.Endpoint, access: NodeAccess) -> Any:
    """The node's answer, or None (down, or refused: a refusal other than 401/403 is transient)."""
    try:
        return call(addr, op, timeout=1.0, access=access)
    except AdminError as exc:
        if exc.code in ("unauthorized", "forbidden"):
            raise  # no point waiting: the token is wrong
        return None
    except OSError:
        return None


def leader_of(addresses: dict[str, str], access: NodeAccess = PLAIN) -> tuple[str, int] | None:
    for nid, addr in addresses.items():
        st = _get(addr, p.STATUS, access)
        if st and st["role"] == "leader":
            return nid, int(st["commit_index"])
    return None


def wait_caught_up(
    nid: str, addr: str, addresses: dict[str, str], timeout: float, access: NodeAccess = PLAIN
) -> None:
    _, commit = wait_until(lambda: leader_of(addresses, access), timeout, "a leader")
    wait_until(
        lambda: (
            (_get(addr, p.READY, access) or {}).get("ready")
            and (_get(addr, p.STATUS, access) or {}).get("applied_index", -1) >= commit
        ),
        timeout,
        f"{nid} to be ready and caught up",
    )


def config_restarter(config: ClusterConfig) -> Callable[[str], None]:
    """SIGTERM the node holding the data dir's lock, wait for it to exit, start it again."""

    def restart(nid: str) -> None:
        node = config.node(nid)
        pid = int((node.data_dir / "LOCK").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 60, f"{nid} (pid {pid}) to exit")
        with open(node.data_dir.parent / f"{nid}.out", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "raftstate.node", "node", "--config", str(config.path), "--id", nid],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    return restart


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (a zombie still answers kill 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def roll(
    addresses: dict[str, str],
    restart: Callable[[str], None],
    rounds: int,
    settle_s: float,
    access: NodeAccess = PLAIN,
    client: Client | None = None,
) -> dict[str, float]:
    leader_of(addresses, access)  # a refused token stops here, with the node's message
    work = Workload(list(addresses.values()), f"rolling-restart:{int(time.time())}", client)
    t_start = time.monotonic()
    with work.running():
        wait_until(lambda: work.acked > 20, 30, "the workload to start")
        for r in range(rounds):
            leader = wait_until(lambda: leader_of(addresses, access), 30, "a leader")[0]
            order = [n for n in addresses if n != leader] + [leader]
            for nid in order:
                t0 = time.monotonic()
                restart(nid)
                wait_caught_up(nid, addresses[nid], addresses, timeout=60, access=access)
                print(
                    f"round {r + 1}: restarted {nid}{' (leader)' if nid == leader else ''} in "
                    f"{time.monotonic() - t0:5.2f} s; writes so far {work.acked}, failed {len(work.failed)}, "
                    f"longest stall {work.longest_stall_s * 1000:.0f} ms",
                    flush=True,
                )
                time.sleep(settle_s)
    final = work.client.get(work.key)
    work.client.close()
    return {
        "nodes": len(addresses),
        "rounds": rounds,
        "seconds": round(time.monotonic() - t_start, 1),
        "writes_acked": work.acked,
        "writes_failed": len(work.failed),
        "longest_stall_ms": round(work.longest_stall_s * 1000),
        "worst_write_latency_ms": round(work.worst_latency_s * 1000),
        "counter_matches_acks": float(final == work.acked),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="restart the nodes of this running cluster (on this host)")
    where.add_argument("--nodes", type=int, choices=(3, 5), help="start a temp cluster of 3 or 5 nodes")
    ap.add_argument("--rounds", type=int, default=1, help="times to restart every node (default 1)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between two restarts (default 1)")
    ap.add_argument("--token", help="with --config, when auth is on (default $RAFTSTATE_TOKEN)")
    ap.add_argument("--ca", help="with --config: CA to verify https nodes (default tls.ca of the file)")
    args = ap.parse_args()
    if args.config:
        config = load_config(args.config)
        access = NodeAccess.for_operator(config, args.token, args.ca)
        kw: dict[str, Any] = {"timeout": 30}
        if args.token:
            kw["token"] = args.token
        if args.ca:
            kw["ca"] = args.ca
        client = Client.from_config(args.config, **kw)
        try:
            report = roll(
                config.addresses, config_restarter(config), args.rounds, args.settle, access, client
            )
        except AdminError as exc:
            print(f"rolling_restart.py: {exc}", file=sys.stderr)
            return 1
    else:
        with (
            tempfile.TemporaryDirectory(prefix="raftstate-roll-") as tmp,
            LocalCluster(Path(tmp), args.nodes) as c,
        ):
            c.start()
            c.wait_leader()

            def restart(nid: str) -> None:
                c.kill(nid, signal.SIGTERM)
                c.start(nid)

            report = roll(dict(c.addr), restart, args.rounds, args.settle)
    print()
    for k, v in report.items():
        print(f"{k:24} {v:g}")
    if report["writes_failed"] or not report["counter_matches_acks"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
