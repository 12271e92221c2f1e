"""Watches: each watcher's sequence must equal the committed history of its prefix between its
first and its last revision — no gap, no duplicate, no reordering (docs/watch.md, docs/chaos.md).

A watcher's record (:class:`WatchLog`) is one uninterrupted watch: the revision it asked from
(``start``), every event it yielded, and the revision it was complete up to when it stopped
(``upto``: ``Watch.revision``). The committed history is not observed directly; two references
stand in for it:

* **acknowledged writes**: a put's answer carries its version, which IS its revision. Every
  acknowledged ``write``/``uwrite``/``fenced-write`` of a key under the prefix with
  ``start <= version <= upto`` must be in the sequence, once, as a put of that value at that
  revision (a missing one is a gap; one at another revision or with another value is a lie).
* **the other watchers**: two watchers of the same prefix must have yielded the same events
  (type, key, value, revision) on the revisions both cover — this covers what acknowledgements
  cannot: compare-and-sets, increments, lock events, expiries, writes whose answer was lost.

And on each sequence alone: revisions never go down (reordered), an event is never yielded twice
(duplicated: the same revision, key and type again), every key is under the prefix and every
revision within ``[start, upto]`` (events after ``upto`` are a revision not yet complete: they are
only held to order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op

#: history functions whose ``ok`` result is the version (= revision) of a put of ``value``
PUT_FS = ("write", "uwrite", "fenced-write")
#: at most this many anomalies are listed per watcher and rule (a broken run can have thousands)
MAX_LISTED = 5


@dataclass(slots=True)
class WatchLog:
    """One uninterrupted watch of a chaos run."""

    name: str
    prefix: str
    start: int  #: the first revision it asked for
    upto: int  #: complete up to this revision when it stopped (start - 1: nothing complete)
    #: (revision, type, key, value) in the order yielded
    events: list[tuple[int, str, str, Any]] = field(default_factory=list)
    #: the nodes its polls were answered by, in order
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "start": self.start,
            "upto": self.upto,
            "nodes": self.nodes,
            "events": [list(e) for e in self.events],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WatchLog:
        evs = [(int(e[0]), str(e[1]), str(e[2]), e[3]) for e in d["events"]]
        return cls(d["name"], d["prefix"], int(d["start"]), int(d["upto"]), evs, list(d.get("nodes", [])))


def check(logs: Sequence[WatchLog], ops: Sequence[Op]) -> CheckResult:
    if not any(log.upto >= log.start for log in logs):
        return CheckResult("watch", "unknown", 0, note="no watcher completed a single revision")
    anomalies: list[str] = []
    checked = 0
    puts = [o for o in ops if o.f in PUT_FS and o.ok and isinstance(o.result, int)]
    for log in logs:
        checked += len(log.events)
        anomalies += _alone(log)
        anomalies += _against_acks(log, puts)
    for i, a in enumerate(logs):
        for b in logs[i + 1 :]:
            if a.prefix == b.prefix:
                anomalies += _against_each_other(a, b)
    covered = sum(max(0, log.upto - log.start + 1) for log in logs)
    note = f"{len(logs)} watchers, {covered} revisions covered, {len(puts)} acknowledged puts as reference"
    return CheckResult.of("watch", checked, anomalies, note)


def _alone(log: WatchLog) -> list[str]:
    out: list[str] = []
    seen: set[tuple[int, str, str]] = set()
    last = 0
    for rev, typ, key, _ in log.events:
        if rev < last:
            out.append(
                f"watch {log.name} ({log.prefix!r}): revision {rev} ({typ} {key!r}) after {last}: reordered"
            )
        if (rev, key, typ) in seen:
            out.append(
                f"watch {log.name} ({log.prefix!r}): {typ} {key!r} at revision {rev} "
                "yielded twice: duplicated"
            )
        if not key.startswith(log.prefix):
            out.append(
                f"watch {log.name} ({log.prefix!r}): {typ} {key!r} at revision {rev} is not under the prefix"
            )
        if rev < log.start:
            out.append(f"watch {log.name} ({log.prefix!r}): revision {rev} is before its start {log.start}")
        seen.add((rev, key, typ))
        last = max(last, rev)
    return out[: MAX_LISTED * 4]


def _against_acks(log: WatchLog, puts: Sequence[Op]) -> list[str]:
    out: list[str] = []
    got: dict[tuple[int, str], list[Any]] = {}
    for rev, typ, key, value in log.events:
        if typ == "put":
            got.setdefault((rev, key), []).append(value)
    missing = 0
    for o in puts:
        rev = o.result
        if not (o.key.startswith(log.prefix) and log.start <= rev <= log.upto):
            continue
        values = got.get((rev, o.key))
        if values is None:
            missing += 1
            if missing <= MAX_LISTED:
                out.append(
                    f"watch {log.name} ({log.prefix!r}, revisions {log.start}..{log.upto}): the acknowledged "
                    f"{o.f} of {o.key!r} = {o.value!r} (version {rev}, by {o.process}) is missing: a gap"
                )
        elif o.value not in values:
            out.append(
                f"watch {log.name} ({log.prefix!r}): {o.key!r} at revision {rev} was written as {o.value!r} "
                f"(acknowledged to {o.process}) but the watcher saw {values[0]!r}"
            )
    if missing > MAX_LISTED:
        out.append(f"watch {log.name}: ... {missing - MAX_LISTED} more acknowledged writes missing")
    return out


def _against_each_other(a: WatchLog, b: WatchLog) -> list[str]:
    lo, hi = max(a.start, b.start), min(a.upto, b.upto)
    if lo > hi:
        return []

    def within(log: WatchLog) -> list[tuple[int, str, str, Any]]:
        return [e for e in log.events if lo <= e[0] <= hi]

    ea, eb = within(a), within(b)
    if ea == eb:
        return []
    for i, (x, y) in enumerate(zip(ea, eb, strict=False)):
        if x != y:
            return [
                f"watches {a.name} and {b.name} of {a.prefix!r} differ on revisions {lo}..{hi} at their "
                f"event #{i}: {_show(x)} vs {_show(y)} ({len(ea)} vs {len(eb)} events)"
            ]
    longer, shorter = (a, b) if len(ea) > len(eb) else (b, a)
    n_long, n_short = max(len(ea), len(eb)), min(len(ea), len(eb))
    extra = (ea if len(ea) > len(eb) else eb)[n_short]
    return [
        f"watches {a.name} and {b.name} of {a.prefix!r} differ on revisions {lo}..{hi}: {longer.name} has "
        f"{n_long} events, {shorter.name} {n_short} (first extra: {_show(extra)})"
    ]


def _show(e: tuple[int, str, str, Any]) -> str:
    rev, typ, key, value = e
    return f"{typ} {key!r}@{rev}" + (f"={value!r:.40}" if typ == "put" else "")
