"""``raftstate chaos``: break a real cluster on purpose and check that nothing was lost or reordered.

The same command three ways: ``raftstate chaos ...`` (installed), ``python -m raftstate.node.chaos
...`` and ``python scripts/chaos.py ...`` (a checkout)::

    raftstate chaos --nodes 3 --duration 60 --faults kill,pause,partition,clock,restart-all
    raftstate chaos --seed 17                               replay one run
    raftstate chaos --runs 50 --duration 60                 soak: one seed per run, then a summary
    raftstate chaos --duration 20 --faults restart-all --inject-bug ack-before-fsync
    raftstate chaos --runs 3 --duration 40 --faults membership,kill,partition
    raftstate chaos --profile catch-up                      1M keys, wiped follower, kills mid-copy
    raftstate chaos --preload 20000 --duration 60 --faults wipe-follower,kill-receiver,kill-sender,kill

A profile is a named set of --preload/--faults/--duration; options given explicitly win.
``catch-up`` = --preload 1000000 --faults wipe-follower,kill-receiver,kill-sender,kill
--duration 300 (docs/chaos.md, "Catch-up at 1M keys": what it shows).

Each run prints its verdict table and writes a report folder (history, fault timeline, latency
picture: report.html). Exit status 0 only if every check of every run passed; 2 for a usage error.
Every failure prints its seed and replay command.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from raftstate.node.chaos.faults import FAULTS
from raftstate.node.chaos.report import verdict_table
from raftstate.node.chaos.run import RunConfig, RunResult, replay_command, run
from raftstate.node.test_hooks import BUGS

DEFAULTS: dict[str, Any] = {
    "duration": 60.0,
    "faults": "kill,pause,partition,clock,restart-all",
    "preload": 0,
}
#: named runs: values for --preload/--faults/--duration (explicit options override them)
PROFILES: dict[str, dict[str, Any]] = {
    "catch-up": {
        "preload": 1_000_000,
        "faults": "wipe-follower,kill-receiver,kill-sender,kill",
        "duration": 300.0,
    },
}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked, with a profile's values where no option was given (``kinds``:
    the fault kinds as a list). Exits 2 on a usage error."""
    p = argparse.ArgumentParser(
        prog="raftstate chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=3, choices=[3, 5], help="cluster size")
    p.add_argument("--profile", choices=sorted(PROFILES), help="a named run (see above)")
    p.add_argument(
        "--duration",
        type=float,
        help=f"seconds of workload and faults per run (default {DEFAULTS['duration']:g})",
    )
    p.add_argument(
        "--faults",
        help=f"comma-separated subset of: {', '.join(FAULTS)} (default {DEFAULTS['faults']})",
    )
    p.add_argument(
        "--preload",
        type=int,
        help="webhook markers loaded before the workload and faults start (default 0); they are "
        "covered by the replica-digest check and a sample is read back at the end",
    )
    p.add_argument("--seed", type=int, help="seed of the (first) run; default: random")
    p.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
    p.add_argument("--inject-bug", choices=BUGS, help="run every node with this deliberate bug (test-only)")
    p.add_argument("--report", type=Path, help="report folder (with --runs: one subfolder per seed)")
    a = p.parse_args(argv)
    for name, default in DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, PROFILES.get(a.profile or "", {}).get(name, default))

    kinds = [k.strip() for k in a.faults.split(",") if k.strip()]
    for k in kinds:
        if k not in FAULTS:
            p.error(f"--faults: unknown fault {k!r}; choose from {', '.join(FAULTS)}")
    if not kinds:
        p.error("--faults: give at least one fault kind")
    if a.duration < 5 or a.runs < 1 or a.preload < 0:
        p.error("--duration must be >= 5 seconds, --runs >= 1 and --preload >= 0")
    a.kinds = kinds
    return a


def main(argv: list[str] | None = None) -> int:
    a = options(argv)
    kinds = a.kinds
    first = a.seed if a.seed is not None else random.randrange(1, 1_000_000)

    results: list[RunResult] = []
    for seed in range(first, first + a.runs):
        report = None
        if a.report is not None:
            report = a.report / f"seed-{seed}" if a.runs > 1 else a.report
        cfg = RunConfig(
            seed=seed,
            nodes=a.nodes,
            duration_s=a.duration,
            faults=tuple(kinds),
            inject_bug=a.inject_bug,
            report_dir=report,
            preload=a.preload,
        )
        print(
            f"== run seed {seed}: {a.nodes} nodes, {a.duration:g}s, faults {','.join(kinds)}"
            + (f", preload {a.preload:,} keys" if a.preload else "")
            + (f", injected bug {a.inject_bug}" if a.inject_bug else ""),
            flush=True,
        )
        started = time.monotonic()
        try:
            res = run(cfg)
        except Exception as exc:  # the harness itself broke: still name the seed and the replay
            why = f"{type(exc).__name__}: {exc}"
            print(f"   FAIL seed {seed}: the run could not complete: {why}")
            print(f"   replay: {replay_command(cfg)}", flush=True)
            res = RunResult(cfg, [], Counter(), 0, cfg.report_dir or Path("."), why)
            results.append(res)
            continue
        results.append(res)
        print(verdict_table(res))
        faults = ", ".join(f"{k} {n}" for k, n in sorted(res.fault_counts.items())) or "none"
        print(
            f"   {'PASS' if res.passed else 'FAIL'} seed {seed}: {res.ops} ops, faults: {faults}, "
            f"{time.monotonic() - started:.0f}s, report {res.report_dir}/report.html",
            flush=True,
        )
        if not res.passed:
            print(f"   replay: {replay_command(cfg)}", flush=True)
    if a.runs > 1:
        print(summary(results))
    return 0 if all(r.passed for r in results) else 1


def summary(results: list[RunResult]) -> str:
    faults: Counter[str] = Counter()
    for r in results:
        faults.update(r.fault_counts)
    checked = sum(c.ops_checked for r in results for c in r.results)
    failed = [r for r in results if not r.passed]
    unknown = sum(1 for r in results for c in r.results if c.verdict == "unknown")
    lines = [
        "== summary",
        f"runs: {len(results)} ({len(results) - len(failed)} passed, {len(failed)} failed)",
        "faults injected: "
        + (", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none")
        + f" (total {sum(faults.values())})",
        f"ops recorded: {sum(r.ops for r in results)}; ops checked: {checked}",
        f"anomalies: {sum(r.anomalies for r in results)}; undecided checks: {unknown}",
    ]
    for r in failed:
        lines.append(f"FAILED seed {r.cfg.seed}: replay with: {replay_command(r.cfg)}")
    return "\n".join(lines)
