"""The replicated state machine: applied identically, in log order, on every node.

Commands are msgpack maps ``{"op": NAME, ...}`` carried in NORMAL log entries. ``apply`` is
deterministic: it reads nothing but the command, the entry's index and its leader-assigned
``time_ms`` — never a local clock — so every replica that applies the same log reaches
byte-identical state (and identical snapshots).

This module holds the minimal key-value machine of the node issue (set/get/delete with a version
per key); the job-state operations (TTL, counters, locks, sessions) extend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack


class CommandError(Exception):
    """A command that is well-formed on the wire but refused by the state machine (deterministically)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Record:
    value: Any
    #: log index of the last change
    version: int


def encode_command(op: str, **args: Any) -> bytes:
    out: bytes = msgpack.packb({"op": op, **args}, use_bin_type=True)
    return out


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, Record] = {}
        #: index of the last entry applied (any kind); snapshots record it
        self.applied_index = 0
        #: cluster time of the last applied entry (ms)
        self.time_ms = 0

    def apply(self, index: int, time_ms: int, data: bytes) -> Any:
        """Apply one command. Returns its result, or a CommandError instance (never raises for
        a bad command: a refusal is an outcome every replica must agree on)."""
        assert index > self.applied_index, f"apply out of order: {index} after {self.applied_index}"
        self.applied_index = index
        self.time_ms = max(self.time_ms, time_ms)
        try:
            cmd = msgpack.unpackb(data, raw=False)
            if not isinstance(cmd, dict) or not isinstance(cmd.get("op"), str):
                raise CommandError("invalid_request", "command must be a map with an 'op' string")
            handler = getattr(self, "_op_" + cmd["op"], None)
            if handler is None:
                raise CommandError("invalid_request", f"unknown operation {cmd['op']!r}")
            return handler(index, cmd)
        except CommandError as exc:
            return exc
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            return CommandError("invalid_request", f"malformed command at index {index}: {exc}")

    def advance_to(self, index: int, time_ms: int) -> None:
        """An entry that carries no command (no-op, membership) still moves index and time."""
        assert index > self.applied_index, (index, self.applied_index)
        self.applied_index = index
        self.time_ms = max(self.time_ms, time_ms)

    # ----------------------------------------------------------------- operations

    def _op_set(self, index: int, cmd: dict[str, Any]) -> dict[str, Any]:
        key = cmd["key"]
        self.data[key] = Record(cmd["value"], index)
        return {"version": index}

    def _op_delete(self, index: int, cmd: dict[str, Any]) -> dict[str, Any]:
        existed = self.data.pop(cmd["key"], None) is not None
        return {"deleted": existed}

    # ----------------------------------------------------------------- reads (local state)

    def get(self, key: str) -> Record | None:
        return self.data.get(key)

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Canonical bytes (keys sorted) so two replicas at the same index produce equal snapshots."""
        body = {
            "applied_index": self.applied_index,
            "time_ms": self.time_ms,
            "data": [[k, r.value, r.version] for k, r in sorted(self.data.items())],
        }
        out: bytes = msgpack.packb(body, use_bin_type=True)
        return out

    def restore(self, blob: bytes) -> None:
        body = msgpack.unpackb(blob, raw=False)
        self.applied_index = int(body["applied_index"])
        self.time_ms = int(body["time_ms"])
        self.data = {k: Record(v, int(ver)) for k, v, ver in body["data"]}
