"""Operator commands of ``raftstate`` (docs/operations.md has the procedures):

    raftstate member list                                  voters, learners, addresses, lag
    raftstate member add --id n4 --address host:port       learner -> caught up -> voter
    raftstate member remove --id n2                        the leader included (it hands over first)
    raftstate leader transfer [--to n3]
    raftstate snapshot save FILE                           consistent backup from the leader
    raftstate snapshot inspect FILE                        verify; counts, index, term, size
    raftstate snapshot restore FILE --config new.yaml      seed the data dirs of a new cluster
    raftstate force-release LOCK                           free a lock whoever holds it (admin; audited)

Every command but inspect/restore takes the shared cluster options (client/cli_options.py):
``--endpoints`` or ``--config`` (else $RAFTSTATE_ENDPOINTS, $RAFTSTATE_CONFIG, ./cluster.yaml), and on a
secured cluster ``--token`` (default $RAFTSTATE_TOKEN; admin for changes and backups, read for ``member
list``) and ``--ca FILE`` (default $RAFTSTATE_CA, or the ``tls.ca`` of the cluster file). Exit codes as
every command's (cli_options.EXIT_CODES_HELP): 1 refused by the cluster or a bad backup file, 2 usage or
cluster file, 3 no leader / nothing answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from raftstate.client import protocol as p
from raftstate.client.cli_options import (
    EXIT_CLUSTER,
    EXIT_CODES_HELP,
    EXIT_NO,
    EXIT_USAGE,
    Subparsers,
    UsageError,
    cluster_options,
    no_cluster_file_hint,
    target_of,
    timeout_of,
)
from raftstate.node.config import ClusterConfig, ConfigError, load_config
from raftstate.node.ops.admin_http import AdminError, call, call_leader, open_leader
from raftstate.node.ops.backup_file import BackupError
from raftstate.node.security.node_access import NodeAccess
from raftstate.node.storage.data_dir import atomic_write, fsync_dir

__all__ = ["add_ops_commands", "membership_note", "run_ops_command"]

Handler = Callable[[argparse.Namespace], int]

#: AdminError codes that mean the cluster could not answer (exit 3), not that it said no (exit 1)
_NO_ANSWER = (None, p.UNAVAILABLE, p.TIMEOUT, p.OUTCOME_UNKNOWN, p.NOT_LEADER)


def add_ops_commands(sub: Subparsers) -> None:
    cluster = cluster_options(default_timeout="30")

    def leaf(
        parent: Any, name: str, help_: str, handler: Handler, *, remote: bool = True
    ) -> argparse.ArgumentParser:
        """``remote``: the command talks to a cluster (the shared cluster options)."""
        sp: argparse.ArgumentParser = parent.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[cluster] if remote else [],
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(ops_command=handler)
        return sp

    members = sub.add_parser(
        "member",
        help="list, add or remove cluster members",
        description="list, add or remove cluster members",
    ).add_subparsers(dest="member_action", required=True, metavar="ACTION")
    leaf(members, "list", "voters, learners, addresses and lag behind the leader", _member_list)
    sp = leaf(
        members, "add", "add a node as a learner, wait until it caught up, promote it to voter", _member_add
    )
    sp.add_argument("--id", required=True, help="the new member's id (unique, never reused)")
    sp.add_argument("--address", required=True, help="host:port the new node serves on")
    sp.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for it to catch up (default 120)"
    )
    sp.add_argument("--learner", action="store_true", help="stop after adding it as a learner")
    sp = leaf(members, "remove", "remove a member (a leader hands leadership over first)", _member_remove)
    sp.add_argument("--id", required=True, help="the member to remove")

    leader = sub.add_parser("leader", help="hand leadership to another voter").add_subparsers(
        dest="leader_action", required=True, metavar="ACTION"
    )
    sp = leaf(leader, "transfer", "hand leadership to another voter (default: the most caught-up)", _transfer)
    sp.add_argument("--to", help="the voter to hand leadership to")

    sp = leaf(
        sub,
        "force-release",
        "free a lock whoever holds it, e.g. a worker that died with a long lease (admin token; the "
        "leader logs an AUDIT line)",
        _lock_force_release,
    )
    sp.add_argument("name", help="the lock's name")

    snap = sub.add_parser("snapshot", help="save, inspect and restore backups").add_subparsers(
        dest="snapshot_action", required=True, metavar="ACTION"
    )
    sp = leaf(snap, "save", "write a consistent backup of the state, from the leader", _snapshot_save)
    sp.add_argument("file", type=Path, help="where to write the backup (replaced atomically)")
    sp = leaf(
        snap, "inspect", "verify a backup file and print what it holds", _snapshot_inspect, remote=False
    )
    sp.add_argument("file", type=Path, help="the backup file")
    sp.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sp = leaf(
        snap,
        "restore",
        "seed the (empty) data dirs of a NEW cluster from a backup",
        _snapshot_restore,
        remote=False,
    )
    sp.add_argument("file", type=Path, help="the backup file")
    sp.add_argument("--config", required=True, help="the new cluster's file (a new cluster_id)")


def run_ops_command(args: argparse.Namespace) -> int:
    """Run a parsed operator command; errors become one line and an exit code (cli_options)."""
    try:
        if getattr(args, "ops_command", None) is not _snapshot_inspect and hasattr(args, "timeout"):
            args.timeout = timeout_of(args, 30.0)
        return int(args.ops_command(args))
    except (ConfigError, UsageError) as exc:
        print(f"raftstate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdminError as exc:  # a code: the cluster answered no; none: nothing answered in time
        print(f"raftstate: {exc}", file=sys.stderr)
        return EXIT_CLUSTER if exc.code in _NO_ANSWER else EXIT_NO
    except urllib.error.URLError as exc:
        print(f"raftstate: cannot reach the cluster: {exc.reason}", file=sys.stderr)
        return EXIT_CLUSTER
    except (BackupError, OSError) as exc:
        print(f"raftstate: {exc}", file=sys.stderr)
        return EXIT_NO


def _config(args: argparse.Namespace) -> ClusterConfig | None:
    target = target_of(args)
    if target.config is None:
        return None
    if not os.path.exists(target.config):
        raise UsageError(no_cluster_file_hint(target.config))
    return load_config(target.config)


def _endpoints(args: argparse.Namespace) -> list[str]:
    target = target_of(args)
    if target.endpoints is not None:
        return target.endpoints
    config = _config(args)
    assert config is not None
    return list(config.addresses.values())


def _access(args: argparse.Namespace) -> NodeAccess:
    """Token and TLS trust for this command (built once per command)."""
    if not hasattr(args, "_access"):
        args._access = NodeAccess.for_operator(_config(args), args.token, args.ca)
    access: NodeAccess = args._access
    return access


def _leader_view(args: argparse.Namespace) -> dict[str, Any]:
    """``/v1/members`` from the leader (only its view has match and lag)."""
    eps = _endpoints(args)
    deadline = time.monotonic() + args.timeout
    while True:
        doc: dict[str, Any] = call_leader(eps, p.MEMBERS_LIST, timeout=args.timeout, access=_access(args))
        if doc["role"] == "leader":
            return doc
        if doc.get("leader_address"):
            try:
                doc = call(doc["leader_address"], p.MEMBERS_LIST, access=_access(args))
                if doc["role"] == "leader":
                    return doc
            except (AdminError, OSError):
                pass
        if time.monotonic() > deadline:
            raise AdminError(f"no leader within {args.timeout:.0f}s (asked {', '.join(eps)})")
        time.sleep(0.2)


def _print_members(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(
        f"cluster {doc['cluster_id']}, leader {doc['leader']}, term {doc['term']}, "
        f"last index {doc['last_index']}"
    )
    head = ["ID", "ADDRESS", "ROLE", "MATCH", "LAG", "LAST CONTACT"]
    rows = [
        [
            r["id"] + (" *" if r["id"] == doc["leader"] else ""),
            r["address"] or "-",
            r["role"],
            "-" if r["match"] is None else str(r["match"]),
            "-" if r["lag"] is None else str(r["lag"]),
            "-" if r["last_contact_ms_ago"] is None else f"{r['last_contact_ms_ago']} ms ago",
        ]
        for r in doc["members"]
    ]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _member_list(args: argparse.Namespace) -> int:
    _print_members(args, _leader_view(args))
    return 0


def _member_add(args: argparse.Namespace) -> int:
    eps = _endpoints(args)
    body = {"id": args.id, "address": args.address}
    try:
        call_leader(eps, p.MEMBER_ADD, body, timeout=args.timeout, access=_access(args))
        print(f"{args.id} added as a learner at {args.address}", flush=True)
    except AdminError as exc:
        row = _row(_leader_view(args), args.id)
        # Re-running an interrupted add resumes it: same learner, same address.
        if (
            exc.code != "member_exists"
            or row is None
            or row["role"] != "learner"
            or row["address"] != args.address
        ):
            raise
        print(f"{args.id} is already a learner at {args.address}; waiting for it to catch up", flush=True)
    if args.learner:
        return 0
    deadline = time.monotonic() + args.wait
    last_print = 0.0
    while True:
        doc = _leader_view(args)
        row = _row(doc, args.id)
        if row is None:
            raise AdminError(f"{args.id} is no longer a member (removed meanwhile?)")
        if row["role"] == "voter":
            break
        lag = row["lag"]
        if row["match"] and lag is not None and lag <= doc["settings"]["max_entries_per_msg"]:
            try:
                call_leader(eps, p.MEMBER_PROMOTE, timeout=args.timeout, access=_access(args), name=args.id)
                print(f"{args.id} caught up (lag {lag}); promoted to voter", flush=True)
                break
            except AdminError as exc:
                if exc.code not in ("not_caught_up", "change_in_progress"):
                    raise
        now = time.monotonic()
        if now > deadline:
            raise AdminError(
                f"{args.id} did not catch up within {args.wait:.0f}s (match {row['match']}, lag {lag}); "
                f"is it running? start it with `raftstate node --join {eps[0]} --id {args.id} --address "
                f"{args.address} --data-dir DIR`, then run this command again (it resumes); it stays a "
                "learner meanwhile (no vote, harmless), or undo with "
                f"`raftstate member remove --id {args.id}`"
            )
        if now - last_print >= 1.0:
            print(
                f"waiting for {args.id}: match {row['match']} of {doc['last_index']} (lag {lag})", flush=True
            )
            last_print = now
        time.sleep(0.2)
    _print_members(args, _leader_view(args))
    return 0


def _row(doc: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    return next((r for r in doc["members"] if r["id"] == node_id), None)


def _member_remove(args: argparse.Namespace) -> int:
    doc = call_leader(
        _endpoints(args), p.MEMBER_REMOVE, timeout=args.timeout, access=_access(args), name=args.id
    )
    print(f"{args.id} removed", flush=True)
    _print_members(args, doc)
    return 0


def _transfer(args: argparse.Namespace) -> int:
    body = {"to": args.to} if args.to else {}
    doc = call_leader(_endpoints(args), p.LEADER_TRANSFER, body, timeout=args.timeout, access=_access(args))
    if args.to and doc.get("leader") != args.to:
        raise AdminError(f"leadership did not move to {args.to} (leader now: {doc.get('leader')}); retry")
    print(json.dumps(doc) if args.json else f"leader: {doc.get('leader')}")
    return 0


def _lock_force_release(args: argparse.Namespace) -> int:
    doc = call_leader(
        _endpoints(args), p.LOCK_FORCE_RELEASE, {}, timeout=args.timeout, access=_access(args), name=args.name
    )
    if args.json:
        print(json.dumps(doc))
    elif doc.get("released"):
        print(f"lock {args.name!r} released; it was held by {doc.get('owner')!r} (token {doc.get('token')})")
    else:
        print(f"lock {args.name!r} was not held; nothing to release")
    return 0


def _snapshot_save(args: argparse.Namespace) -> int:
    path: Path = args.file
    part = path.with_name(path.name + ".download")
    t0 = time.monotonic()
    with open_leader(_endpoints(args), p.SNAPSHOT_SAVE, timeout=args.timeout, access=_access(args)) as resp:

        def chunks() -> Iterator[bytes]:
            while chunk := resp.read(1 << 20):
                yield chunk

        atomic_write(part, chunks(), None)
    from raftstate.node.ops.backup_restore import describe  # replays it: proves it is usable

    try:
        header, counts = describe(part)
    except BackupError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)
    fsync_dir(path.resolve().parent, None)
    size = path.stat().st_size
    doc = {
        "file": str(path),
        "bytes": size,
        "index": header.index,
        "term": header.term,
        "counts": counts,
        "from": header.node,
        "seconds": round(time.monotonic() - t0, 3),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        c = counts
        print(
            f"saved {path}: {size} bytes, index {header.index}, term {header.term}, from {header.node}; "
            f"{c['keys']} keys, {c['locks']} locks, {c['sessions']} sessions; checksum OK"
        )
    return 0


def _snapshot_inspect(args: argparse.Namespace) -> int:
    from raftstate.node.ops.backup_restore import describe  # the state machine: not needed elsewhere

    header, counts = describe(args.file)
    doc = {
        "file": str(args.file),
        "bytes": args.file.stat().st_size,
        "cluster_id": header.cluster_id,
        "index": header.index,
        "term": header.term,
        "time_ms": header.time_ms,
        "counts": counts,
        "from": header.node,
        "created_at": header.created_at,
        "checksum": "OK",
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    for k, v in doc.items():
        text = " ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else v
        print(f"{k:<11} {text}")
    return 0


def _snapshot_restore(args: argparse.Namespace) -> int:
    from raftstate.node.ops.backup_restore import restore

    config = load_config(args.config)
    for line in restore(args.file, config):
        print(line)
    print(f"start the nodes of {args.config} as usual (`raftstate node --config {args.config} --id ID`)")
    return 0


def membership_note(config_ids: list[str], docs: dict[str, dict[str, Any] | None]) -> str | None:
    """For ``raftstate status``: say so when cluster.yaml and the cluster's membership differ.
    cluster.yaml is read only at a node's first start; after that the log decides."""
    live = [d for d in docs.values() if d]
    leader = next((d for d in live if d.get("role") == "leader"), live[0] if live else None)
    if leader is None or "members" not in leader:
        return None
    voters, learners = leader["members"]["voters"], leader["members"]["learners"]
    if sorted(config_ids) == sorted(voters) and not learners:
        return None
    peers = leader.get("peers", {})
    extra = [f"{n} at {peers[n]['address']}" for n in voters + learners if n not in config_ids and n in peers]
    gone = [n for n in config_ids if n not in voters and n not in learners]
    lines = [
        f"note: the cluster's members (from {leader['id']}'s log) are voters {voters}, learners {learners}; "
        "cluster.yaml differs (it is only read at a node's first start)."
    ]
    if extra:
        lines.append(
            f"      not in cluster.yaml: {', '.join(extra)} (add them to the file for clients and status)"
        )
    if gone:
        lines.append(f"      in cluster.yaml but removed from the cluster: {', '.join(gone)}")
    lines.append("      `raftstate member list` shows every member with its address and lag.")
    return "\n".join(lines)
