"""Counters: every increment is ``by=1`` through the client's exactly-once sessions.

Per key, with A acknowledged and U unknown-outcome increments and F the value read back at the end:
F must lie in [A, A + U] (below: a lost increment; above: one applied twice), and F == A when U == 0.
The values returned by acknowledged increments must all differ (two equal ones: a double
increment answered twice, or a lost one) and lie in [1, A + U].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op, by_key


def check(ops: Sequence[Op], final: Mapping[str, Any]) -> CheckResult:
    anomalies: list[str] = []
    checked = 0
    for key, incs in sorted(by_key(ops, ("incr",)).items()):
        acked = [o for o in incs if o.ok]
        a = len(acked)
        u = sum(1 for o in incs if o.status == "info")
        checked += a + u
        f = final.get(key)
        value = 0 if f is None else f
        if not isinstance(value, int):
            anomalies.append(f"counter {key!r}: final value {value!r} is not an integer")
            continue
        if value < a:
            anomalies.append(
                f"counter {key!r}: final value {value} < {a} acknowledged increments ({a - value} lost)"
            )
        elif value > a + u:
            anomalies.append(
                f"counter {key!r}: final value {value} > {a} acknowledged + {u} unknown "
                f"increments (applied twice?)"
            )
        dupes = sorted(v for v, n in Counter(o.result for o in acked).items() if n > 1)
        if dupes:
            anomalies.append(f"counter {key!r}: increments acknowledged with the same value {dupes[:5]}")
        out = sorted(o.result for o in acked if not (isinstance(o.result, int) and 1 <= o.result <= a + u))
        if out:
            anomalies.append(f"counter {key!r}: acknowledged values {out[:5]} outside [1, {a + u}]")
    return CheckResult.of("counters", checked, anomalies)
