"""The operation history of a chaos run: one JSON object per line, Jepsen-style.

Every operation is written twice: ``invoke`` when a worker starts it and one completion —
``ok`` (it happened, with its result), ``fail`` (it certainly did not happen) or ``info`` (the
outcome is unknown: it may have happened, at any time after its invocation). ``t`` is
``time.monotonic()`` (ordering and latency), ``wall`` is ``time.time()`` (only the TTL checker
compares it with expiry times, which are wall/cluster time).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

Status = Literal["ok", "fail", "info"]
INFINITY = float("inf")


@dataclass(slots=True)
class Op:
    """One operation, invocation and completion joined."""

    id: int
    process: str  #: the worker that ran it (one client each)
    f: str  #: what it did: read, write, cas, incr, acquire, fenced-write, release, claim, mark, ...
    key: str
    value: Any = None  #: the argument (what was written, the expected/new pair of a cas, ...)
    invoke_t: float = 0.0
    invoke_wall: float = 0.0
    status: Status = "info"
    result: Any = None  #: what came back (read value, new version, token, True/False, ...)
    complete_t: float = INFINITY  #: INFINITY while unknown
    complete_wall: float = INFINITY
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def latency_s(self) -> float | None:
        return None if self.complete_t == INFINITY else self.complete_t - self.invoke_t


class History:
    """Append-only, thread-safe recorder; writes each event as it happens (a crash keeps the prefix)."""

    def __init__(self, path: Path | None = None) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._out: TextIO | None = path.open("w", encoding="utf-8") if path else None

    def invoke(self, process: str, f: str, key: str, value: Any = None, **extra: Any) -> Op:
        with self._lock:
            op = Op(len(self.ops), process, f, key, value, time.monotonic(), time.time(), extra=extra)
            self.ops.append(op)
            self._write(
                {
                    "type": "invoke",
                    "id": op.id,
                    "process": process,
                    "f": f,
                    "key": key,
                    "value": value,
                    "t": op.invoke_t,
                    "wall": op.invoke_wall,
                    **extra,
                }
            )
        return op

    def complete(self, op: Op, status: Status, result: Any = None, error: str | None = None) -> None:
        with self._lock:
            op.status = status
            op.result = result
            op.error = error
            if status != "info":
                op.complete_t, op.complete_wall = time.monotonic(), time.time()
            else:  # unknown: it may take effect at any later time; keep when we gave up for the plot
                op.extra["gave_up_t"] = time.monotonic()
            self._write(
                {
                    "type": status,
                    "id": op.id,
                    "process": op.process,
                    "f": op.f,
                    "key": op.key,
                    "result": result,
                    "error": error,
                    "t": time.monotonic(),
                    "wall": time.time(),
                }
            )

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _write(self, event: dict[str, Any]) -> None:
        if self._out is not None:
            self._out.write(json.dumps(event, default=repr) + "\n")
            self._out.flush()


def load(path: Path) -> list[Op]:
    """Read a history file back into joined operations (an op never completed stays ``info``)."""
    ops: dict[int, Op] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if ev["type"] == "invoke":
                extra = {
                    k: v
                    for k, v in ev.items()
                    if k not in ("type", "id", "process", "f", "key", "value", "t", "wall")
                }
                ops[ev["id"]] = Op(
                    ev["id"], ev["process"], ev["f"], ev["key"], ev["value"], ev["t"], ev["wall"], extra=extra
                )
            else:
                op = ops[ev["id"]]
                op.status, op.result, op.error = ev["type"], ev["result"], ev["error"]
                if ev["type"] != "info":
                    op.complete_t, op.complete_wall = ev["t"], ev["wall"]
    return sorted(ops.values(), key=lambda o: o.id)


def by_key(ops: Iterable[Op], fs: tuple[str, ...]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        if op.f in fs:
            out.setdefault(op.key, []).append(op)
    return out
