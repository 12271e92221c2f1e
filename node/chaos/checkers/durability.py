"""Durability after healing: every acknowledged write is present at the end, or legitimately
overwritten.

For each key written by ``write`` / ``cas`` / ``uwrite`` / ``fenced-write`` (unique values), let the
final value be what a linearizable read returned after every fault was healed. It must be the value
of some write W that took effect or may have (acknowledged, or outcome unknown) and that was not
overwritten for sure: no acknowledged write A of that key was invoked after W completed. A missing
key with acknowledged writes is a lost write. (``uwrite`` keys are written once each: they must all
be there.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op, by_key

WRITE_FS = ("write", "cas", "uwrite", "fenced-write")


def written_value(op: Op) -> Any:
    if op.f == "cas":
        return op.value[1]
    if op.f == "fenced-write":
        return op.value
    return op.value


def took_effect(op: Op) -> bool | None:
    """True: acknowledged as applied; None: maybe; False: certainly not."""
    if op.status == "info":
        return None
    if op.status == "fail":
        return False
    return op.result is not False  # a cas answered False did not write


def check(ops: Sequence[Op], final: Mapping[str, Any]) -> CheckResult:
    anomalies: list[str] = []
    checked = 0
    for key, writes in sorted(by_key(ops, WRITE_FS).items()):
        acked = [w for w in writes if took_effect(w) is True]
        maybe = [w for w in writes if took_effect(w) is not False]
        checked += len(acked)
        if key not in final:
            anomalies.append(f"durability {key!r}: not read back at the end")
            continue
        value = final[key]
        if value is None:
            if acked:
                last = max(acked, key=lambda w: w.complete_t)
                anomalies.append(
                    f"durability {key!r}: missing at the end; {len(acked)} acknowledged writes "
                    f"lost (last: #{last.id} {last.process} {written_value(last)!r})"
                )
            continue
        sources = [w for w in maybe if written_value(w) == value]
        if not sources:
            anomalies.append(f"durability {key!r}: final value {value!r} was never written")
            continue
        w = sources[0]
        later = [a for a in acked if a.invoke_t > w.complete_t]
        if later:
            a = max(later, key=lambda x: x.invoke_t)
            anomalies.append(
                f"durability {key!r}: holds {value!r} (#{w.id}) although the acknowledged write "
                f"#{a.id} {written_value(a)!r} began after it completed: that write was lost"
            )
    return CheckResult.of("durability", checked, anomalies[:50])
