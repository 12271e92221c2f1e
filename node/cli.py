"""The ``raftstate`` command.

raftstate node    --config cluster.yaml --id n1     run one node in the foreground
raftstate cluster up [--config cluster.yaml]        run every node of the file as child processes
raftstate status  [--config cluster.yaml]           one table: every node's role, term, indexes
raftstate chaos   [--duration 60 --faults ...]      chaos runs against a local cluster (node/chaos)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from raftstate.client.cli import add_client_commands
from raftstate.node.config import ClusterConfig, ConfigError, load_config
from raftstate.node.ops.cli import add_ops_commands, membership_note, run_ops_command
from raftstate.node.ops.status_fetcher import StatusFetcher

DEFAULT_CONFIG = "cluster.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftstate", description="A Raft-replicated store for job state.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_node = sub.add_parser("node", help="run one node in the foreground")
    p_node.add_argument(
        "--config",
        help=f"cluster file (default {DEFAULT_CONFIG}); with --join/--data-dir: only its auth:/tls: are used",
    )
    p_node.add_argument("--id", required=True, help="this node's id in the config")
    p_node.add_argument(
        "--join", metavar="MEMBER", help="join a running cluster through this member's host:port"
    )
    p_node.add_argument("--address", help="with --join: host:port this node serves on")
    p_node.add_argument("--data-dir", type=Path, help="with --join: this node's data dir (restart: alone)")
    p_node.add_argument("--log-level", default="INFO")

    p_cluster = sub.add_parser("cluster", help="run a whole cluster locally")
    csub = p_cluster.add_subparsers(dest="action", required=True)
    p_up = csub.add_parser("up", help="start every node of the config as child processes")
    p_up.add_argument("--config", default=DEFAULT_CONFIG)
    p_up.add_argument("--token", help="token for /status when auth is on (default $RAFTSTATE_TOKEN)")

    p_status = sub.add_parser("status", help="show every node's role, term, leader and indexes")
    p_status.add_argument("--config", default=DEFAULT_CONFIG)
    p_status.add_argument("--json", action="store_true", help="print the raw /status documents")
    p_status.add_argument("--token", help="token of role read or higher (default $RAFTSTATE_TOKEN)")

    add_client_commands(sub)  # get | set | delete | incr | keys | lock (client/cli.py)
    add_ops_commands(sub)  # member | leader | snapshot (node/ops/cli.py)
    # Listed for --help; its options belong to its own parser (node/chaos/cli.py), reached below.
    sub.add_parser("chaos", help="break a local cluster on purpose and check the history (chaos --help)")
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["chaos"]:
        from raftstate.node.chaos.cli import main as chaos_main

        return chaos_main(words[1:])
    args = parser.parse_args(argv)
    if "ops_command" in args:
        return run_ops_command(args)
    if "client_command" in args:
        return int(args.client_command(args))
    try:
        if args.command == "node":
            return _cmd_node(args)
        config = load_config(args.config)
        fetcher = StatusFetcher(config, args.token)
        if args.command == "cluster":
            return _cmd_cluster_up(config, fetcher)
        return _cmd_status(config, fetcher, as_json=args.json)
    except ConfigError as exc:
        print(f"raftstate: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- node


def _cmd_node(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from raftstate.node.runtime import event_loop, log_filters

    log_filters.install()  # a malformed request is one warning line, not an ERROR traceback
    from raftstate.node.peers.join import JoinRefused, prepare_start  # imported late: `status` needs none
    from raftstate.node.server import serve
    from raftstate.node.storage.errors import StorageError

    try:
        config, joining = prepare_start(args)
    except JoinRefused as exc:
        print(f"raftstate node {args.id}: refusing to start: {exc}", file=sys.stderr)
        return 2
    try:
        return event_loop.run(serve(config, args.id, joining=joining))
    except StorageError as exc:
        print(f"raftstate node {args.id}: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(
            f"raftstate node {args.id}: cannot serve on {config.node(args.id).address}: {exc}",
            file=sys.stderr,
        )
        return 3


# --------------------------------------------------------------------------- cluster up


def _cmd_cluster_up(config: ClusterConfig, fetcher: StatusFetcher) -> int:
    from raftstate.node.ops.local_cluster import already_running

    if (running := already_running(config, fetcher)) is not None:
        print(f"raftstate cluster up: {running}", file=sys.stderr)
        return 1
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for n in config.nodes:
        cmd = [sys.executable, "-m", "raftstate.node", "node", "--config", str(config.path), "--id", n.id]
        procs[n.id] = subprocess.Popen(cmd)
        url = fetcher.url(n.address)
        print(f"started {n.id} (pid {procs[n.id].pid}) on {url}  data: {n.data_dir}", flush=True)
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    announced: str | None = None
    try:
        while not stopping:
            time.sleep(0.5)
            for nid, p in procs.items():
                if p.poll() is not None and not stopping:
                    print(f"node {nid} exited with code {p.returncode}", flush=True)
            leader = _find_leader(config, fetcher)
            if leader and leader != announced:
                addr = config.node(leader).address if leader in config.addresses else "?"
                print(f"leader: {leader} at {fetcher.url(addr)}  (Ctrl-C stops the cluster)", flush=True)
                announced = leader
            if all(p.poll() is not None for p in procs.values()):
                return 1
    finally:
        print("stopping the cluster...", flush=True)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def _find_leader(config: ClusterConfig, fetcher: StatusFetcher) -> str | None:
    for n in config.nodes:
        st = fetcher.fetch(n.address, timeout=0.3)
        if st and st.get("role") == "leader":
            return str(st["id"])
    return None


# --------------------------------------------------------------------------- status


def _cmd_status(config: ClusterConfig, fetcher: StatusFetcher, *, as_json: bool) -> int:
    rows: list[list[str]] = []
    docs: dict[str, Any] = {}
    for n in config.nodes:
        st = fetcher.fetch(n.address, timeout=2.0)
        docs[n.id] = st
        if st is None:
            state = fetcher.refusals.get(n.address, "DOWN")
            rows.append([n.id, n.address, state, "-", "-", "-", "-", "-"])
            continue
        contact = st.get("last_contact_ms_ago") or {}
        last = f"{min(contact.values())} ms" if contact else "-"
        rows.append(
            [
                n.id,
                n.address,
                st["role"],
                str(st["term"]),
                str(st["leader"] or "-"),
                str(st["commit_index"]),
                str(st["applied_index"]),
                last,
            ]
        )
    if as_json:
        print(json.dumps(docs, indent=2))
    else:
        head = ["ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST CONTACT"]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        note = membership_note([n.id for n in config.nodes], docs)
        if note:
            print(note)
    return 0 if any(d is not None for d in docs.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
