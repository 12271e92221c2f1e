"""``raftstate watch PREFIX [--from REV] [--json]``: print every change under a prefix as it happens.

    raftstate watch imports:42:                 17 put imports:42:progress {"processed": 100}
    raftstate watch imports:42: --from 1        history first (from revision 1), then live changes
    raftstate watch "" --json --count 10        one JSON object per event; stop after 10

A line is ``REVISION TYPE KEY [VALUE]`` (a put's value as JSON, strings bare; lock events show the
token and owner). ``--json`` prints each event as the wire map: type, key, revision, value, version,
expires_at (epoch seconds), token, owner. Runs until Ctrl-C (exit 0) or ``--count`` events; exit 3
when the cluster cannot answer or the history from ``--from`` is gone (``compacted``: it names the
oldest revision kept — watch again from there, or without ``--from``).
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from raftstate.client.errors import InvalidRequest
from raftstate.client.sync_client import Client
from raftstate.client.watch import Event

__all__ = ["add_watch_command", "event_doc", "event_line", "watch_command"]

#: how cli.py adds a command: (name, help, handler) -> its parser, with the common options
Command = Callable[[str, str, Callable[[argparse.Namespace, Client], int]], argparse.ArgumentParser]


def add_watch_command(command: Command) -> None:
    """Register ``watch`` through cli.py's ``command`` helper (it adds --config/--endpoints/--json...)."""
    sp = command("watch", "print every change under a prefix, in order, as it happens", watch_command)
    sp.add_argument("prefix", help='keys and lock names starting with this ("" for everything)')
    sp.add_argument(
        "--from", dest="from_revision", type=int, metavar="REV", help="replay history from REV first"
    )
    sp.add_argument("--count", type=int, help="stop after this many events")


def watch_command(args: argparse.Namespace, c: Client) -> int:
    if args.from_revision is not None and args.from_revision < 1:
        raise InvalidRequest(f"--from must be a revision >= 1, got {args.from_revision}")
    if args.count is not None and args.count < 1:
        raise InvalidRequest(f"--count must be >= 1, got {args.count}")
    seen = 0
    events = c.watch(args.prefix, args.from_revision)
    try:
        for item in events:
            if not isinstance(item, Event):
                continue
            print(
                json.dumps(event_doc(item), default=_json_default) if args.json else event_line(item),
                flush=True,
            )
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return 0


def event_doc(e: Event) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": e.type, "key": e.key, "revision": e.revision}
    if e.type == "put":
        doc.update(value=e.value, version=e.version)
    if e.expires_at is not None:
        doc["expires_at"] = e.expires_at.timestamp()
    if e.token is not None:
        doc["token"] = e.token
    if e.owner is not None:
        doc["owner"] = e.owner
    return doc


def event_line(e: Event) -> str:
    parts = [str(e.revision), e.type, e.key]
    if e.type == "put":
        parts.append(e.value if isinstance(e.value, str) else json.dumps(e.value, default=_json_default))
    if e.token is not None:
        parts.append(f"token={e.token}")
    if e.owner is not None:
        parts.append(f"owner={e.owner}")
    if e.expires_at is not None:
        parts.append(f"expires_at={e.expires_at.isoformat()}")
    return " ".join(parts)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return {"$bytes": base64.b64encode(o).decode("ascii")}
    if isinstance(o, datetime):
        return o.timestamp()
    raise TypeError(f"cannot print {type(o).__name__} as JSON")
