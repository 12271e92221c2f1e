"""Replicas agree at the end: after healing, every node's whole state hashes the same.

Each node answers ``GET /status?digest=1`` with ``{"applied_index", "sha256"}``: the SHA-256 of
its state's canonical bytes (keys, values, expiry times, versions, locks, sessions) at that applied
index, computed over a pinned view off the event loop. The run asks every node until they all
report the same applied index (the cluster goes quiet once the workload stops; a node that was just
restarted or wiped catches up first) and hands the last answers here.

pass: every node at one applied index with one digest. fail: nodes at the same index with
different digests (the replicas diverged: which node holds which digest), or they never reached
the same index while the run waited (a replica stuck behind: named with its index). unknown: a node
never answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raftstate.node.chaos.checkers import CheckResult


def check(digests: Mapping[str, Mapping[str, Any] | None], waited_s: float) -> CheckResult:
    """``digests``: node id -> its last answer ``{"applied_index": int, "sha256": str}`` (None: it
    never answered); ``waited_s``: how long the run waited for them to agree on an index."""
    if not digests:
        return CheckResult("replicas", "unknown", 0, note="no node was asked")
    silent = sorted(n for n, d in digests.items() if d is None)
    if silent:
        return CheckResult(
            "replicas", "unknown", 0, note=f"no digest from {', '.join(silent)} within {waited_s:.0f}s"
        )
    answers = {n: d for n, d in digests.items() if d is not None}
    indexes = {n: int(d["applied_index"]) for n, d in answers.items()}
    if len(set(indexes.values())) > 1:
        top = max(indexes.values())
        behind = ", ".join(f"{n} at {i}" for n, i in sorted(indexes.items()) if i < top)
        return CheckResult.of(
            "replicas",
            len(answers),
            [f"replicas never reached one applied index within {waited_s:.0f}s: {behind}; others at {top}"],
        )
    index = next(iter(indexes.values()))
    by_sha: dict[str, list[str]] = {}
    for n, d in sorted(answers.items()):
        by_sha.setdefault(str(d["sha256"]), []).append(n)
    anomalies = []
    if len(by_sha) > 1:
        groups = "; ".join(f"{','.join(ns)}: {sha[:16]}" for sha, ns in sorted(by_sha.items()))
        anomalies.append(f"replicas differ at applied index {index}: {groups}")
    note = "" if anomalies else f"{len(answers)} replicas identical at applied index {index}"
    return CheckResult.of("replicas", len(answers), anomalies, note)
