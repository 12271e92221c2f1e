"""TTL markers: a worker writes a marker with an absolute ``expires_at`` E (epoch seconds — cluster
time), then reads it (linearizably) a few times before and after E. Each marker key is written once.

Cluster time is the leader's clock (entry stamps never go back). This run's nodes share one machine
clock, so cluster time differs from the checker's wall clock only by the clock faults it injected:
at any moment, ``wall - back_s <= cluster time <= wall + ahead_s``, where ahead_s / back_s are the
largest forward / backward offsets injected into any node (0 without clock faults). A read's
cluster time lies between its invocation and completion, so, with ``margin_s`` for rounding:

* **readable after expiry** (anomaly): the read found the marker although
  ``invoke_wall - back_s - margin_s > E`` — cluster time was certainly past E;
* **missing before expiry** (anomaly): the marker write was acknowledged before the read was
  invoked, and the read found nothing although ``complete_wall + ahead_s + margin_s < E``;
* a read that found the marker must report the E that was written.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op

DEFAULT_MARGIN_S = 0.5


def check(
    ops: Sequence[Op], *, ahead_s: float = 0.0, back_s: float = 0.0, margin_s: float = DEFAULT_MARGIN_S
) -> CheckResult:
    marks = {o.key: o for o in ops if o.f == "mark"}
    anomalies: list[str] = []
    checked = 0
    for r in ops:
        if r.f != "mark-read" or not r.ok:
            continue
        m = marks.get(r.key)
        if m is None or m.status == "fail":
            continue
        checked += 1
        expires = float(m.value["expires_at"])
        if r.result is not None:
            if r.invoke_wall - back_s - margin_s > expires:
                anomalies.append(
                    f"ttl {r.key!r}: read by {r.process} found the marker "
                    f"{r.invoke_wall - expires:.2f}s after its expiry (allowed skew {back_s}s "
                    f"+ margin {margin_s}s)"
                )
            got = r.result.get("expires_at") if isinstance(r.result, dict) else None
            if got is None or abs(float(got) - expires) > 0.002:
                anomalies.append(f"ttl {r.key!r}: read found expires_at {got!r}, written {expires!r}")
        elif m.ok and m.complete_t < r.invoke_t and r.complete_wall + ahead_s + margin_s < expires:
            anomalies.append(
                f"ttl {r.key!r}: read by {r.process} missed the marker "
                f"{expires - r.complete_wall:.2f}s before its expiry (allowed skew {ahead_s}s "
                f"+ margin {margin_s}s)"
            )
    return CheckResult.of("ttl", checked, anomalies[:50])
