"""The checkers of a chaos run. Each takes the history (and the state read back after healing) and
returns a :class:`CheckResult`: ``pass``, ``fail`` with the anomalies it found, or ``unknown``
when it could not decide within its budget (never a hang).

Pure functions of a history: they may import only ``raftstate.node.chaos.history`` and this
package (tests/test_chaos_checkers.py shows each one catching a known-bad history)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["pass", "fail", "unknown"]

#: what a final read returns for a key that does not exist
MISSING: Any = None


@dataclass(slots=True)
class CheckResult:
    name: str
    verdict: Verdict
    ops_checked: int
    anomalies: list[str] = field(default_factory=list)
    note: str = ""

    @classmethod
    def of(cls, name: str, ops_checked: int, anomalies: list[str], note: str = "") -> CheckResult:
        return cls(name, "fail" if anomalies else "pass", ops_checked, anomalies, note)
