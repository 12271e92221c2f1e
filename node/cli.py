"""The ``raftstate`` command: one parser for every command (``raftstate --help``).

raftstate node    --config cluster.yaml --id n1     run one node in the foreground
raftstate cluster up [--config FILE | --dev]        run every node of the file (or a throwaway
                                                    3-node dev cluster) as child processes
raftstate init    [PATH] [--auth]                   write a commented cluster.yaml
raftstate status  [cluster options]                 one table: every node's role, term, indexes
raftstate get|set|delete|incr|keys|lock             job state (client/cli.py)
raftstate member|leader|snapshot                    operations (node/ops/cli.py)
raftstate chaos   [--duration 60 --faults ...]      chaos runs against a local cluster (node/chaos)

Every command that talks to a cluster shares one parent parser (client/cli_options.py): the same
``--endpoints/--config/--token/--ca/--json/--timeout``, their environment variables and exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raftstate import __version__
from raftstate.client import protocol as p
from raftstate.client.cli import add_client_commands, run_client_command
from raftstate.client.cli_options import (
    EXIT_CLUSTER,
    EXIT_CODES_HELP,
    EXIT_NO,
    EXIT_OK,
    EXIT_USAGE,
    CliParser,
    UsageError,
    cluster_options,
    no_cluster_file_hint,
    target_of,
    timeout_of,
)
from raftstate.node.config import ClusterConfig, ConfigError, load_config
from raftstate.node.ops.cli import add_ops_commands, membership_note, run_ops_command
from raftstate.node.ops.status_fetcher import StatusFetcher

DEFAULT_CONFIG = "cluster.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

NODE_EXIT_HELP = """exit codes of `raftstate node`:
  0  stopped by SIGTERM/SIGINT (a leader hands leadership over first)
  2  refused to start: bad cluster file, missing secret, --join refused
  3  cannot start: the data dir is unusable (corrupt, locked by another process, another node's),
     or the address is in use
  4  stopped on a storage fault while running (disk full, I/O error): fix it and restart"""

QUICK_START = """start here:
  raftstate cluster up --dev              a throwaway 3-node cluster on 127.0.0.1:7001-7003
  raftstate set greeting hello --endpoints http://127.0.0.1:7001
  raftstate init cluster.yaml             a commented cluster file to edit (--auth: with tokens)"""


def build_parser() -> CliParser:
    """The whole ``raftstate`` parser (tests read its help)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = CliParser(
        prog="raftstate",
        description="A Raft-replicated store for job state.",
        epilog=f"{QUICK_START}\n\n{EXIT_CODES_HELP}\n\n{NODE_EXIT_HELP}",
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"raftstate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_node = sub.add_parser(
        "node", help="run one node in the foreground", epilog=NODE_EXIT_HELP, formatter_class=raw
    )
    p_node.add_argument(
        "--config",
        metavar="FILE",
        help=f"cluster file (default {DEFAULT_CONFIG}); with --join/--data-dir: only its auth:/tls: are used",
    )
    p_node.add_argument("--id", required=True, help="this node's id in the config")
    p_node.add_argument(
        "--join", metavar="MEMBER", help="join a running cluster through this member's host:port"
    )
    p_node.add_argument("--address", help="with --join: host:port this node serves on")
    p_node.add_argument("--data-dir", type=Path, help="with --join: this node's data dir (restart: alone)")
    _log_options(p_node)

    p_cluster = sub.add_parser("cluster", help="run a whole cluster locally")
    csub = p_cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_up = csub.add_parser(
        "up",
        help="start every node of a cluster file (or --dev: a throwaway one) as child processes",
        description="Start every node of a cluster file as child processes; Ctrl-C or SIGTERM stops\n"
        "them all (a leader hands over first). --dev needs no file: 3 nodes on 127.0.0.1, auth off.",
        parents=[cluster_options(default_timeout="0.3 per /status poll")],
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )
    p_up.add_argument(
        "--dev",
        action="store_true",
        help="a 3-node dev cluster, auth explicitly off: its cluster file and data in a temp dir "
        "(removed on exit) or in --data-dir (kept, reused next time)",
    )
    p_up.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="with --dev: keep the cluster file and data here"
    )
    p_up.add_argument(
        "--port",
        type=int,
        default=7001,
        metavar="BASE",
        help="with --dev: the nodes serve on BASE, BASE+1, BASE+2 (default 7001; 0: any free ports)",
    )
    _log_options(p_up)

    p_init = sub.add_parser(
        "init",
        help="write a commented cluster.yaml (--auth: with generated tokens)",
        description="Write a commented cluster file for a local cluster; never overwrites a file.",
        formatter_class=raw,
        epilog="exit codes: 0 written, 2 the file exists or cannot be written",
    )
    p_init.add_argument(
        "path", nargs="?", type=Path, default=Path(DEFAULT_CONFIG), help=f"where (default ./{DEFAULT_CONFIG})"
    )
    p_init.add_argument(
        "--auth",
        action="store_true",
        help="turn auth on: a generated cluster secret and admin/write/read tokens, each in a file "
        "of secrets/ next to PATH (mode 0600)",
    )
    p_init.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    p_init.add_argument(
        "--port", type=int, default=7001, metavar="BASE", help="ports BASE, BASE+1, ... (default 7001)"
    )

    sub.add_parser(
        "status",
        help="show every node's role, term, leader and indexes",
        description="One line per node: role, term, leader, commit and applied index, last contact.\n"
        "--json prints the raw /status documents.",
        parents=[cluster_options(default_timeout="2 per node")],
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )

    add_client_commands(sub)  # get | set | delete | incr | keys | lock (client/cli.py)
    add_ops_commands(sub)  # member | leader | snapshot (node/ops/cli.py)
    # Listed for --help; its options belong to its own parser (node/chaos/cli.py), reached in main.
    sub.add_parser("chaos", help="break a local cluster on purpose and check the history (chaos --help)")
    return parser


def _log_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="the least severe level logged (default INFO)",
    )
    sp.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: one line per record, naming the node; json: one JSON object per line (default text)",
    )


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["chaos"]:
        from raftstate.node.chaos.cli import main as chaos_main

        return chaos_main(words[1:])
    args = build_parser().parse_args(words)
    if "ops_command" in args:
        return run_ops_command(args)
    if "client_handler" in args:
        return run_client_command(args)
    try:
        if args.command == "node":
            return _cmd_node(args)
        if args.command == "init":
            return _cmd_init(args)
        if args.command == "cluster":
            return _cmd_cluster_up(args)
        return _cmd_status(args)
    except (ConfigError, UsageError) as exc:
        print(f"raftstate {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _load(args: argparse.Namespace) -> ClusterConfig:
    target = target_of(args)
    if target.config is None:
        raise UsageError("internal: no cluster file")  # callers handle endpoints first
    if not os.path.exists(target.config):
        raise UsageError(no_cluster_file_hint(target.config))
    return load_config(target.config)


# --------------------------------------------------------------------------- node


def _cmd_node(args: argparse.Namespace) -> int:
    from raftstate.node.runtime import event_loop, log_filters, log_format

    log_format.setup(args.id, level=args.log_level, fmt=args.log_format)
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


# --------------------------------------------------------------------------- init


def _cmd_init(args: argparse.Namespace) -> int:
    from raftstate.node.ops.init_config import write_cluster_file

    try:
        done = write_cluster_file(args.path, auth=args.auth, nodes=args.nodes, base_port=args.port)
    except (ConfigError, OSError) as exc:
        print(f"raftstate init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {done.config}: {len(done.addresses)} nodes on {', '.join(done.addresses)}")
    if done.secrets_dir is not None:
        print(f"secrets (mode 0600) in {done.secrets_dir}/; clients and tools use a token from there:")
        print(f"  export RAFTSTATE_TOKEN=$(cat {done.secrets_dir}/admin.token)")
    else:
        print("auth is off (fine on 127.0.0.1); `raftstate init --auth` writes one with tokens")
    print(f"start it: raftstate cluster up --config {done.config}")
    return EXIT_OK


# --------------------------------------------------------------------------- cluster up


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.endpoints:
        raise UsageError(
            "cluster up starts the nodes of a cluster file; --endpoints names nodes that already run "
            "(use --config FILE, or --dev for a throwaway cluster)"
        )
    if args.dev and args.config:
        raise UsageError("--dev writes its own cluster file; drop --config (or drop --dev)")
    if args.data_dir and not args.dev:
        raise UsageError("--data-dir goes with --dev; a cluster file names each node's data_dir")
    scratch: Path | None = None
    if args.dev:
        config_path, scratch = _dev_cluster_file(args.data_dir, args.port)
    else:
        config_path = Path(target_of(args).config or DEFAULT_CONFIG)
        if not config_path.exists():
            raise UsageError(no_cluster_file_hint(str(config_path)))
    try:
        config = load_config(config_path)
        fetcher = StatusFetcher(config, args.token, args.ca)
        from raftstate.node.ops.local_cluster import already_running

        if (running := already_running(config, fetcher)) is not None:
            print(f"raftstate cluster up: {running}", file=sys.stderr)
            return 1
        if args.dev:
            where = f"{scratch} (removed on exit)" if scratch else str(config_path.parent)
            print(f"raftstate dev cluster: {len(config.nodes)} nodes, auth off, files in {where}", flush=True)
        return _run_cluster(args, config, fetcher)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _dev_cluster_file(data_dir: Path | None, base_port: int) -> tuple[Path, Path | None]:
    """The dev cluster's file (written now, or kept from a last run in ``data_dir``) and the temp dir
    to remove on exit (None when ``data_dir`` keeps it)."""
    from raftstate.node.ops.local_cluster import LocalCluster

    root = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="raftstate-dev-"))
    config = root / "cluster.yaml"
    if data_dir is not None and config.exists():
        return config, None  # a kept dev cluster: same ports, same data
    root.mkdir(parents=True, exist_ok=True)
    ports = None if base_port == 0 else [base_port + i for i in range(3)]
    for port in ports or []:
        if not _port_free(port):
            if data_dir is None:
                shutil.rmtree(root, ignore_errors=True)
            raise UsageError(
                f"port {port} on 127.0.0.1 is in use (is another cluster running?); "
                "pass --port BASE for other ports, or --port 0 for any free ones"
            )
    LocalCluster(root, 3, ports=ports, cluster_id="dev")  # writes root/cluster.yaml: auth off, data dirs
    return config, (None if data_dir is not None else root)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # As the nodes bind (aiohttp sets SO_REUSEADDR): connections of a cluster that just stopped,
        # left in TIME_WAIT for a minute, must not read as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_cluster(args: argparse.Namespace, config: ClusterConfig, fetcher: StatusFetcher) -> int:
    poll_s = timeout_of(args, 0.3)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log_args = ["--log-level", args.log_level, "--log-format", args.log_format]
    for n in config.nodes:
        cmd = [sys.executable, "-m", "raftstate.node", "node", "--config", str(config.path), "--id", n.id]
        procs[n.id] = subprocess.Popen([*cmd, *log_args])
        url = fetcher.url(n.address)
        if not args.json:
            print(f"started {n.id} (pid {procs[n.id].pid}) on {url}  data: {n.data_dir}", flush=True)
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    announced: str | None = None
    endpoints = ",".join(fetcher.url(n.address) for n in config.nodes)
    try:
        while not stopping:
            time.sleep(0.5)
            for nid, proc in procs.items():
                if proc.poll() is not None and not stopping:
                    print(f"node {nid} exited with code {proc.returncode}", flush=True)
            leader = _find_leader(config, fetcher, poll_s)
            if leader and leader != announced:
                addr = config.node(leader).address if leader in config.addresses else "?"
                if args.json:
                    doc = {"endpoints": endpoints.split(","), "leader": leader, "config": str(config.path)}
                    print(json.dumps(doc), flush=True)
                else:
                    print(f"leader: {leader} at {fetcher.url(addr)}  (Ctrl-C stops the cluster)", flush=True)
                    if announced is None:
                        _print_snippet(endpoints)
                announced = leader
            if all(proc.poll() is not None for proc in procs.values()):
                return EXIT_CLUSTER
    finally:
        print("stopping the cluster...", flush=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
    return EXIT_OK


def _print_snippet(endpoints: str) -> None:
    first = endpoints.split(",")[0]
    print(f"endpoints: {endpoints}", flush=True)
    print(
        f"try it:    export RAFTSTATE_ENDPOINTS={endpoints}; raftstate set greeting hello; "
        "raftstate get greeting",
        flush=True,
    )
    print(
        f"""python:    python -c 'from raftstate.client import Client; c = Client("{endpoints}"); """
        """c.set("greeting", "hello"); print(c.get("greeting")); c.close()'""",
        flush=True,
    )
    print(f"curl:      curl -s {first}{p.STATUS.path}", flush=True)


def _find_leader(config: ClusterConfig, fetcher: StatusFetcher, timeout: float) -> str | None:
    for n in config.nodes:
        st = fetcher.fetch(n.address, timeout=timeout)
        if st and st.get("role") == "leader":
            return str(st["id"])
    return None


# --------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace) -> int:
    target = target_of(args)
    config = None if target.endpoints is not None else _load(args)
    fetcher = StatusFetcher(config, args.token, args.ca)
    timeout = timeout_of(args, 2.0)
    nodes = (
        [(n.id, n.address) for n in config.nodes] if config else [("?", e) for e in target.endpoints or []]
    )
    rows: list[list[str]] = []
    docs: dict[str, Any] = {}
    for nid, address in nodes:
        st = fetcher.fetch(address, timeout=timeout)
        nid = str(st.get("id", nid)) if st else nid
        docs[nid if nid != "?" else address] = st
        if st is None:
            state = fetcher.refusals.get(address, "DOWN")
            rows.append([nid, address, state, "-", "-", "-", "-", "-"])
            continue
        contact = st.get("last_contact_ms_ago") or {}
        last = f"{min(contact.values())} ms" if contact else "-"
        rows.append(
            [
                nid,
                address,
                st["role"],
                str(st["term"]),
                str(st["leader"] or "-"),
                str(st["commit_index"]),
                str(st["applied_index"]),
                last,
            ]
        )
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        head = ["ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST CONTACT"]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        note = membership_note([n.id for n in config.nodes], docs) if config else None
        if note:
            print(note)
    if any(d is not None for d in docs.values()):
        return EXIT_OK
    return EXIT_NO if fetcher.refusals else EXIT_CLUSTER


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
