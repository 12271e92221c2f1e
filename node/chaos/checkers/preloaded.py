"""The preloaded bulk survived: a sample of the keys loaded (and acknowledged) before the run
started still holds the value written, read back linearizably after healing.

``--preload`` keys are not in the history (node/chaos/preload.py): every one was acknowledged
before the first fault, none is written again, and none expires within the run (7-day ttl), so
each sampled key must hold exactly the value written. A missing or different one is a lost
acknowledged write — the kind a wrongly installed store copy, a replay that skipped too much, or a
compaction ahead of what was durable would cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raftstate.node.chaos.checkers import MISSING, CheckResult


def check(written: Mapping[str, Any], found: Mapping[str, Any], total: int) -> CheckResult:
    """``written``: sampled key -> the value acknowledged; ``found``: key -> the value read at the
    end (MISSING if absent; a key not read at all counts as not checked); ``total``: keys loaded."""
    anomalies = []
    checked = 0
    for key, value in sorted(written.items()):
        if key not in found:
            continue
        checked += 1
        got = found[key]
        if got is MISSING:
            anomalies.append(f"preload {key!r}: acknowledged before the run, missing at the end")
        elif got != value:
            anomalies.append(f"preload {key!r}: holds {got!r}, {value!r} was written")
    note = f"a sample of {checked} of the {total:,} preloaded keys"
    if checked < len(written):
        note += f" ({len(written) - checked} not read back)"
    if checked == 0:
        return CheckResult("preload", "unknown", 0, note=note)
    return CheckResult.of("preload", checked, anomalies[:50], note)
