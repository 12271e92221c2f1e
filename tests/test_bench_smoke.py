"""``scripts/bench.py --quick`` runs end to end against a real cluster: every workload is in the
table and the counter check (final value == acknowledged increments) passed. Speed is not asserted
(the machine is shared); the check itself is shown to catch a lost increment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raftstate.node.bench.report import check_counters
from raftstate.node.bench.targets import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cluster
def test_quick_bench_prints_every_workload_and_verifies_counters() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--protocols", "stream"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout.split("x = ")[0] if "x = " in out.stdout else out.stdout
    rows = [line.split() for line in table.splitlines() if "|" in line]
    for wl in WORKLOADS:
        assert any(r[0] == wl for r in rows), f"no row for {wl} in:\n{out.stdout}"
    assert "counter verification: passed" in out.stdout


def test_counter_check_catches_a_lost_increment(capsys: pytest.CaptureFixture[str]) -> None:
    def run(acked: int, final: int, unknown: int, mismatched: list[str]) -> dict[str, object]:
        ctr = {"acked": acked, "final": final, "unknown": unknown, "mismatched": mismatched}
        return {"system": "raftstate", "concurrency": 16, "workload": "incr", "counters": ctr}

    assert check_counters({"raftstate": [run(10, 10, 0, [])]})
    assert not check_counters({"raftstate": [run(10, 9, 0, ["ctr:1"])]})  # one lost
    assert check_counters({"raftstate": [run(10, 11, 2, ["ctr:1"])]})  # an unknown outcome applied
    assert not check_counters({"raftstate": [run(10, 9, 2, ["ctr:1"])]})  # lost despite unknowns
    assert "COUNTER CHECK FAILED" in capsys.readouterr().out
