"""Dedupe claims: several workers race ``set_if_absent`` on the same keys (unique values each).

Per key: at most one acknowledged winner (``True``); the value read back at the end is the winner's,
or — when no winner was acknowledged — one of the unknown-outcome claims' (or absent); a key
whose claims all answered ``False`` with no unknown outcome among them was "taken" by nobody: an
anomaly too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op, by_key


def check(ops: Sequence[Op], final: Mapping[str, Any]) -> CheckResult:
    anomalies: list[str] = []
    checked = 0
    for key, claims in sorted(by_key(ops, ("claim",)).items()):
        winners = [o for o in claims if o.ok and o.result is True]
        unknown = [o for o in claims if o.status == "info"]
        done = [o for o in claims if o.ok]
        checked += len(done) + len(unknown)
        value = final.get(key)
        if len(winners) > 1:
            anomalies.append(
                f"dedupe {key!r}: won by {len(winners)} callers ({', '.join(o.process for o in winners)})"
            )
        elif winners:
            if value != winners[0].value:
                w = winners[0]
                anomalies.append(
                    f"dedupe {key!r}: {w.process} won with {w.value!r} but the key holds {value!r} at the end"
                )
        elif unknown:
            if value is not None and value not in [o.value for o in unknown]:
                anomalies.append(f"dedupe {key!r}: no claim won, yet the key holds {value!r}")
        elif done:
            anomalies.append(
                f"dedupe {key!r}: all {len(done)} claims lost and none is unknown, "
                f"yet nobody won (final value {value!r})"
            )
    return CheckResult.of("dedupe", checked, anomalies)
