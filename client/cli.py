"""``raftstate get|set|delete|incr|keys|lock``: the client library for operators and scripts.

    raftstate get imports:42:progress                 the value as JSON (exit 1 if missing)
    raftstate set imports:42:progress '{"processed": 100}' --ttl 3600
    raftstate set flag on --if-absent                 VALUE is JSON if it parses, else a string
    raftstate delete imports:42:progress              exit 1 if it did not exist
    raftstate incr imports:42:processed --by 100      prints the new value
    raftstate keys imports:                           one key per line
    raftstate lock search-index                       who holds it ("free" if nobody)
    raftstate lock search-index --ttl 10 --run ./rebuild.sh --full   run a command holding the lock

Every command takes the shared cluster options (client/cli_options.py): ``--endpoints URL,...`` or
``--config FILE`` (else $RAFTSTATE_ENDPOINTS, $RAFTSTATE_CONFIG, ./cluster.yaml), ``--token``, ``--ca``,
``--json`` (machine output) and ``--timeout SECONDS``; the exit codes are in every command's --help.

``lock NAME --run CMD`` runs CMD while holding (and renewing) the lock, with RAFTSTATE_LOCK_NAME and
RAFTSTATE_LOCK_TOKEN in its environment (the token fences its writes); it exits with CMD's code, or 4
if the lock was lost meanwhile (CMD is terminated).

Adding a command: a module with ``add_commands(subparsers)`` that calls
:func:`raftstate.client.cli_options.client_command` per command, and one line in
:func:`add_client_commands`. The ``raftstate`` entry point (raftstate.node.cli) registers these
commands and runs parsed args that carry ``client_handler`` with :func:`run_client_command`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from raftstate.client._types import Entry, LockInfo
from raftstate.client.cli_options import (
    EXIT_CLUSTER,
    EXIT_CODES_HELP,
    EXIT_LOCK_LOST,
    EXIT_NO,
    EXIT_OK,
    EXIT_USAGE,
    CliParser,
    Subparsers,
    UsageError,
    client_command,
    no_cluster_file_hint,
    target_of,
    timeout_of,
)
from raftstate.client.cli_watch import add_watch_command
from raftstate.client.config import TOKEN_ENV
from raftstate.client.errors import InvalidRequest, RaftStateError, VersionMismatch
from raftstate.client.sync_client import Client

__all__ = ["add_client_commands", "main", "run_client_command"]

Handler = Callable[[argparse.Namespace, Client], int]

LOCK_HELP = """show a lock's holder, or run a command while holding the lock.

With --run CMD ...: takes the lock (waiting up to --wait), runs CMD with these environment variables
and renews the lease every ttl/3 while CMD runs:
  RAFTSTATE_LOCK_NAME   the lock's name
  RAFTSTATE_LOCK_TOKEN  its fencing token: pass it to fenced writes so a stale holder is refused
If the lock is lost meanwhile, CMD gets SIGTERM (SIGKILL 10 s later) and the exit code is 4."""


def add_client_commands(subparsers: Subparsers) -> None:
    """Add get/set/delete/incr/keys/lock to a ``raftstate`` argument parser's subcommands; each gets
    the shared cluster options and the exit codes in its help (client/cli_options.py)."""
    command = partial(client_command, subparsers)
    sp = command("get", "print a key's value", _get)
    sp.add_argument("key", help="the key")
    sp.add_argument("--stale", action="store_true", help="read any node's local state (may be behind)")

    sp = command("set", "store a value (JSON if it parses, else a string)", _set)
    sp.add_argument("key", help="the key")
    sp.add_argument("value", help="JSON ('{\"a\": 1}', 42, true) or any other text, stored as a string")
    sp.add_argument("--string", action="store_true", help="store VALUE as a string even if it parses as JSON")
    sp.add_argument("--ttl", type=float, help="expire after this many seconds")
    cond = sp.add_mutually_exclusive_group()
    cond.add_argument("--if-absent", action="store_true", help="only create; exit 1 if the key exists")
    cond.add_argument("--if-version", type=int, help="only if the key is at this version; exit 1 if not")

    sp = command("delete", "remove a key (exit 1 if it did not exist)", _delete)
    sp.add_argument("key", help="the key")
    sp.add_argument("--if-version", type=int, help="only if the key is at this version; exit 1 if not")

    sp = command("incr", "add to an integer key (missing counts as 0) and print the result", _incr)
    sp.add_argument("key", help="the counter's key")
    sp.add_argument("--by", type=int, default=1, help="the amount to add, may be negative (default 1)")
    sp.add_argument("--ttl", type=float, help="(re)set the key to expire after this many seconds")

    sp = command("keys", "list keys with a prefix, sorted", _keys)
    sp.add_argument("prefix", nargs="?", default="", help="list keys starting with this (default: all)")
    sp.add_argument("--limit", type=int, help="at most this many")
    sp.add_argument("--stale", action="store_true", help="read any node's local state (may be behind)")

    sp = command("lock", "show a lock's holder, or run a command while holding the lock", _lock)
    sp.description = LOCK_HELP
    sp.add_argument("name", help="the lock's name")
    sp.add_argument("--ttl", type=float, default=10.0, help="lease seconds, renewed every ttl/3 (default 10)")
    sp.add_argument("--wait", type=float, help="seconds to wait for the lock (default: as long as it takes)")
    sp.add_argument(
        "--run",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="run CMD (everything after --run) while holding the lock, renewing it; must come last. "
        "CMD gets RAFTSTATE_LOCK_NAME and RAFTSTATE_LOCK_TOKEN",
    )
    add_watch_command(command)  # `raftstate watch PREFIX` (client/cli_watch.py)


def run_client_command(args: argparse.Namespace, client: Client | None = None) -> int:
    """Run a parsed client subcommand; returns the exit code. ``client`` is for tests."""
    handler: Handler = args.client_handler
    try:
        if client is None:
            client = _client_for(args)
            with client:
                return handler(args, client)
        return handler(args, client)
    except (InvalidRequest, UsageError) as exc:
        print(f"raftstate {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RaftStateError as exc:
        print(f"raftstate {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CLUSTER


def main(argv: list[str] | None = None) -> int:
    """``python -m raftstate.client.cli ...``: the client commands alone."""
    parser = CliParser(
        prog="raftstate",
        description="raftstate client commands",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_client_command(parser.parse_args(argv))


# --------------------------------------------------------------------------- handlers


def _client_for(args: argparse.Namespace) -> Client:
    kw: dict[str, Any] = {"timeout": timeout_of(args, 10.0)}
    if args.token:
        kw["token"] = args.token
    if args.ca:
        kw["ca"] = args.ca
    target = target_of(args)
    if target.endpoints is not None:
        kw.setdefault("token", os.environ.get(TOKEN_ENV))
        return Client(target.endpoints, **kw)
    assert target.config is not None
    if not os.path.exists(target.config):
        raise UsageError(no_cluster_file_hint(target.config))
    return Client.from_config(target.config, **kw)


def _get(args: argparse.Namespace, c: Client) -> int:
    entry = c.get_entry(args.key, consistency="stale" if args.stale else "linearizable")
    if args.json:
        _print_json(_entry_doc(args.key, entry))
    elif entry is not None:
        _print_value(entry.value)
    else:
        print(f"raftstate get: key {args.key!r} does not exist", file=sys.stderr)
    return EXIT_OK if entry is not None else EXIT_NO


def _set(args: argparse.Namespace, c: Client) -> int:
    value = args.value if args.string else _parse_value(args.value)
    if args.if_absent:
        created = c.set_if_absent(args.key, value, ttl=args.ttl)
        _report(args, {"created": created}, "created" if created else f"key {args.key!r} already exists")
        return EXIT_OK if created else EXIT_NO
    if args.if_version is not None:
        ok = c.compare_and_set(args.key, value, version=args.if_version, ttl=args.ttl)
        _report(args, {"set": ok}, "set" if ok else f"key {args.key!r} is not at version {args.if_version}")
        return EXIT_OK if ok else EXIT_NO
    version = c.set(args.key, value, ttl=args.ttl)
    _report(args, {"version": version}, str(version))
    return EXIT_OK


def _delete(args: argparse.Namespace, c: Client) -> int:
    try:
        deleted = c.delete(args.key, version=args.if_version)
    except VersionMismatch as exc:
        _report(args, {"deleted": False, "version": exc.actual}, f"not deleted: {exc}")
        return EXIT_NO
    _report(args, {"deleted": deleted}, "deleted" if deleted else f"key {args.key!r} did not exist")
    return EXIT_OK if deleted else EXIT_NO


def _incr(args: argparse.Namespace, c: Client) -> int:
    value = c.increment(args.key, args.by, ttl=args.ttl)
    _report(args, {"value": value}, str(value))
    return EXIT_OK


def _keys(args: argparse.Namespace, c: Client) -> int:
    keys = c.keys(args.prefix, limit=args.limit, consistency="stale" if args.stale else "linearizable")
    if args.json:
        _print_json(list(keys))
    else:
        for k in keys:
            print(k)
    return EXIT_OK


def _lock(args: argparse.Namespace, c: Client) -> int:
    cmd: list[str] = args.run or []
    if not cmd:
        info = c.lock_info(args.name)
        _report(args, _lock_doc(info), _lock_line(args.name, info))
        return EXIT_OK
    with c.lock(args.name, ttl=args.ttl, timeout=args.wait) as lock:
        print(f"raftstate lock: holding {args.name!r} with token {lock.token}", file=sys.stderr)
        env = {**os.environ, "RAFTSTATE_LOCK_NAME": lock.name, "RAFTSTATE_LOCK_TOKEN": str(lock.token)}
        try:
            proc = subprocess.Popen(cmd, env=env)
        except OSError as exc:
            print(f"raftstate lock: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
            return 127
        try:
            while proc.poll() is None:
                if lock.wait_lost(timeout=0.1):
                    print(
                        f"raftstate lock: lost {args.name!r} ({lock.lost_reason}); terminating {cmd[0]!r}",
                        file=sys.stderr,
                    )
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    return EXIT_LOCK_LOST
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        return proc.returncode


# --------------------------------------------------------------------------- output


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text, object_hook=_bytes_hook)
    except ValueError:
        return text


def _bytes_hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and isinstance(d.get("$bytes"), str):
        return base64.b64decode(d["$bytes"])
    return d


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return {"$bytes": base64.b64encode(o).decode("ascii")}
    if isinstance(o, datetime):
        return o.timestamp()
    raise TypeError(f"cannot print {type(o).__name__} as JSON")


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, default=_json_default, ensure_ascii=False))


def _print_value(value: Any) -> None:
    # Strings print bare (so shell scripts can use them); everything else as JSON.
    print(value if isinstance(value, str) else json.dumps(value, default=_json_default, ensure_ascii=False))


def _report(args: argparse.Namespace, doc: dict[str, Any], line: str) -> None:
    if args.json:
        _print_json(doc)
    else:
        print(line)


def _entry_doc(key: str, entry: Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    exp = entry.expires_at.timestamp() if entry.expires_at else None
    return {"key": key, "value": entry.value, "version": entry.version, "expires_at": exp}


def _lock_doc(info: LockInfo | None) -> dict[str, Any]:
    if info is None:
        return {"held": False}
    exp = info.expires_at.timestamp() if info.expires_at else None
    return {"held": True, "name": info.name, "owner": info.owner, "token": info.token, "expires_at": exp}


def _lock_line(name: str, info: LockInfo | None) -> str:
    if info is None:
        return f"lock {name!r} is free"
    return f"lock {name!r} is held by {info.owner} with token {info.token} until {info.expires_at}"


if __name__ == "__main__":
    sys.exit(main())
