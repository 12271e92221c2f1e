"""Run the deterministic cluster simulator for soaks and replays: ``python -m raftstate.node.sim``
(from an install) or ``python scripts/simulate.py`` (a checkout) — one command, one parser.

    python scripts/simulate.py --seed 17 --steps 2000 --mix chaos         replay one seed (verbose)
    python scripts/simulate.py --seeds 1000 --steps 5000                   soak every mix, 3 nodes
    python scripts/simulate.py --seeds 200 --mix crash,partition --nodes 5
    python scripts/simulate.py --seeds 100 --mutant commit_old_term        how fast a mutant is caught

Prints one summary line per run class (mix x cluster size) and, for every failing seed, the
invariant and the command that replays it. Exit status 1 if any seed failed (with --mutant: if no
seed failed).
"""

from __future__ import annotations

import argparse
import time

from raftstate.node.sim import MIXES, SimConfig, SimulationFailure, run_seed
from raftstate.node.sim.mutants import MUTANTS
from raftstate.node.sim.summary import ClassSummary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m raftstate.node.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, help="run this one seed and print its full report")
    p.add_argument("--seeds", type=int, default=100, help="number of seeds per run class (from --first)")
    p.add_argument("--first", type=int, default=0, help="first seed of a soak")
    p.add_argument(
        "--steps", type=int, default=2000, help="steps (events) per seed before the liveness phase"
    )
    p.add_argument("--mix", default="all", help=f"comma-separated mixes or 'all': {', '.join(MIXES)}")
    p.add_argument("--nodes", default="3", help="cluster size(s), e.g. 3 or 3,5")
    p.add_argument("--mutant", choices=sorted(MUTANTS), help="run a deliberately broken core")
    p.add_argument(
        "--joiner-bootstrap",
        choices=["initial", "empty", "mixed"],
        default="mixed",
        help="membership a joining node starts with (mixed: either, drawn per joiner)",
    )
    p.add_argument("--no-snapshots", action="store_true", help="never compact: catch up from the log alone")
    p.add_argument("--no-idle-check", action="store_true", help="skip the idle-traffic check at the end")
    p.add_argument("--stop-on-failure", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary lines")
    a = p.parse_args(argv)

    mixes = list(MIXES) if a.mix == "all" else a.mix.split(",")
    for m in mixes:
        if m not in MIXES:
            p.error(f"unknown mix {m!r}; choose from {', '.join(MIXES)}")
    sizes = [int(x) for x in a.nodes.split(",")]

    def config(seed: int, mix: str, nodes: int) -> SimConfig:
        return SimConfig(
            seed=seed,
            steps=a.steps,
            mix=mix,
            nodes=nodes,
            mutant=a.mutant,
            joiner_bootstrap=a.joiner_bootstrap,
            snapshots=not a.no_snapshots,
            check_idle_traffic=not a.no_idle_check,
        )

    if a.seed is not None:
        if len(mixes) != 1 or len(sizes) != 1:
            p.error("--seed replays one run: give one --mix and one --nodes")
        t0 = time.perf_counter()
        try:
            s = run_seed(config(a.seed, mixes[0], sizes[0]))
        except SimulationFailure as f:
            print(f)
            return 1
        print(f"seed {a.seed} passed in {time.perf_counter() - t0:.2f}s: {s}")
        return 0

    failed = 0
    for nodes in sizes:
        for mix in mixes:
            cs = ClassSummary(mix, nodes, a.mutant)
            t0 = time.perf_counter()
            for seed in range(a.first, a.first + a.seeds):
                try:
                    cs.add(run_seed(config(seed, mix, nodes)))
                except SimulationFailure as f:
                    cs.fail(f)
                    if not a.quiet:
                        first = str(f).splitlines()[:2]
                        print(f"FAIL seed {seed}: {' '.join(x.strip() for x in first)}\n  replay: {f.replay}")
                    if a.stop_on_failure:
                        break
            cs.seconds = time.perf_counter() - t0
            failed += len(cs.failures)
            print(cs.line(), flush=True)
    if a.mutant:
        return 0 if failed else 1
    return 1 if failed else 0
