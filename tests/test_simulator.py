"""The seeded cluster simulator (issue #2): its parts, the soak across fault mixes, and the
mutation checks that prove it can fail. (Its disk, Ready driver and partitions are the shared raft
test kit, tested in tests/test_raft_testkit.py.)

Budget: the whole file runs in well under four minutes on a 2-core box with plain ``pytest``.
Long soaks: ``python scripts/simulate.py --seeds 1000 --steps 5000 --nodes 3,5``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from raftstate.node.sim import MIXES, Cluster, SimConfig, SimulationFailure, run_seed
from raftstate.node.sim import invariants as inv
from raftstate.node.sim.mutants import MUTANTS
from raftstate.node.sim.network import NetConfig, Network
from raftstate.node.sim.statemachine import KVStateMachine
from raftstate.node.sim.summary import ClassSummary
from raftstate.raft import Entry, EntryKind, RaftLog
from raftstate.raft.testing import MemDisk, one_way

ROOT = Path(__file__).resolve().parent.parent


def E(index: int, term: int, data: bytes = b"", time_ms: int = 0) -> Entry:
    return Entry(index, term, time_ms, EntryKind.NORMAL, data)


# ============================================================================ network


def test_network_drops_cut_links_and_lost_messages_and_duplicates() -> None:
    net = Network(random.Random(1), NetConfig(loss=0.0, dup=1.0))
    assert len(net.route("a", "b")) == 2
    net.cut(one_way(["a"], ["b"]))
    assert net.route("a", "b") == [] and net.route("b", "a") != []
    assert not net.link_up("a", "b") and net.link_up("b", "a")
    net.heal()
    net.config = NetConfig(loss=1.0)
    assert net.route("a", "b") == []
    assert net.stats.cut == 1 and net.stats.lost == 1


def test_network_delays_are_seeded_and_reordering_overtakes() -> None:
    def delays(seed: int) -> list[int]:
        net = Network(random.Random(seed), NetConfig(delay_min_ms=1, delay_max_ms=5, reorder=0.3))
        return [d for _ in range(200) for d in net.route("a", "b")]

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)
    assert max(delays(7)) > 5  # some messages take the long way round
    assert min(delays(7)) >= 1


# ============================================================================ state machine


def test_state_machine_snapshot_round_trips() -> None:
    sm = KVStateMachine()
    for i, cmd in enumerate([b"a=1", b"b=2", b"a=3"], start=1):
        sm.apply(E(i, 1, cmd, time_ms=i))
    back = KVStateMachine.restore(sm.snapshot())
    assert back == sm and back.read("a") == (3, "3")


# ============================================================================ invariants (each can fail)


def test_invariant_election_safety() -> None:
    h = inv.History()
    assert inv.election_safety(h, "a", 3) is True
    assert inv.election_safety(h, "a", 3) is False
    with pytest.raises(inv.InvariantViolation, match="election_safety"):
        inv.election_safety(h, "b", 3)


def test_invariant_log_matching_entry_and_prefix() -> None:
    h = inv.History()
    inv.log_matching(h, "a", [E(1, 1, b"x"), E(2, 1, b"y")], 0)
    inv.log_matching(h, "b", [E(2, 1, b"y")], 1)
    with pytest.raises(inv.InvariantViolation, match="log_matching"):
        inv.log_matching(h, "c", [E(2, 1, b"z")], 1)
    with pytest.raises(inv.InvariantViolation, match="log_matching"):
        inv.log_matching(h, "c", [E(2, 1, b"y")], 7)  # same entry after a different prefix


def _log(entries: list[Entry], committed: int) -> RaftLog:
    return RaftLog(None, tuple(entries), committed)


def test_invariant_commit_safety_and_leader_completeness() -> None:
    h = inv.History()
    inv.commit_safety(h, "a", 2, _log([E(1, 1, b"x"), E(2, 2, b"y")], 2), 1, 2)
    assert h.commit_term == {1: 2, 2: 2}
    with pytest.raises(inv.InvariantViolation, match="commit_safety"):
        inv.commit_safety(h, "b", 2, _log([E(1, 1, b"x"), E(2, 2, b"other")], 2), 2, 2)
    inv.leader_completeness(h, "c", 2, _log([E(1, 1, b"x")], 0))  # a stale term-2 leader may lack it
    inv.leader_completeness(h, "c", 3, _log([E(1, 1, b"x"), E(2, 2, b"y")], 0))
    with pytest.raises(inv.InvariantViolation, match="leader_completeness"):
        inv.leader_completeness(h, "c", 3, _log([E(1, 1, b"x")], 0))


def test_invariant_commit_rule_is_figure_8() -> None:
    inv.commit_rule("a", 3, _log([E(1, 2), E(2, 3)], 2), 2)
    with pytest.raises(inv.InvariantViolation, match="commit_rule"):
        inv.commit_rule("a", 3, _log([E(1, 2), E(2, 3)], 1), 1)


def test_invariant_state_machine_safety_and_apply_order() -> None:
    h = inv.History()
    sm = KVStateMachine()
    e1 = E(1, 1, b"a=1")
    sm.apply(e1)
    assert inv.state_machine_safety(h, "a", e1, sm.applied_index, sm.chain) is True
    with pytest.raises(inv.InvariantViolation, match="state_machine_safety"):
        inv.state_machine_safety(h, "b", E(1, 1, b"a=2"), 1, 0)
    with pytest.raises(inv.InvariantViolation, match="state_machine_safety"):
        inv.state_machine_safety(h, "b", None, 1, sm.chain ^ 1)  # a restored state that differs
    with pytest.raises(inv.InvariantViolation, match="apply_in_order"):
        inv.apply_in_order("a", 1, E(3, 1))


def test_invariant_cluster_time_and_monotonic_indexes() -> None:
    h = inv.History()
    inv.commit_safety(h, "a", 1, _log([E(1, 1, time_ms=10), E(2, 1, time_ms=10)], 2), 1, 2)
    with pytest.raises(inv.InvariantViolation, match="cluster_time"):
        inv.commit_safety(
            h, "a", 1, _log([E(1, 1, time_ms=10), E(2, 1, time_ms=10), E(3, 1, time_ms=9)], 3), 3, 3
        )
    inv.indexes_monotonic(h, "a", 1, 1, 5, 5, 0)
    with pytest.raises(inv.InvariantViolation, match="indexes_monotonic"):
        inv.indexes_monotonic(h, "a", 1, 1, 4, 5, 0)
    inv.indexes_monotonic(h, "a", 2, 1, 3, 2, 2)  # a restart may come back lower (lazy commit)
    with pytest.raises(inv.InvariantViolation, match="indexes_monotonic"):
        inv.indexes_monotonic(h, "a", 3, 1, 1, 2, 2)  # but never below its snapshot


def test_invariant_votes_and_terms_survive_restarts() -> None:
    h = inv.History()
    inv.vote_stability(h, "a", 4, "b")
    inv.vote_stability(h, "a", 4, "b")
    with pytest.raises(inv.InvariantViolation, match="vote_stability"):
        inv.vote_stability(h, "a", 4, "c")
    with pytest.raises(inv.InvariantViolation, match="vote_stability"):
        inv.vote_remembered(h, "a", 4, None)
    h.max_term_sent["a"] = 5
    with pytest.raises(inv.InvariantViolation, match="term_monotonic"):
        inv.term_monotonic(h, "a", 4, where="restart")


def test_invariant_linearizable_reads_durability_idle_traffic() -> None:
    h = inv.History()
    h.reads["r"] = inv.PendingRead("a", 1, 7, 0)
    with pytest.raises(inv.InvariantViolation, match="linearizable_reads"):
        inv.linearizable_reads(h, "r", 6)
    h.committed[1] = E(1, 1)
    h.max_committed = 1
    with pytest.raises(inv.InvariantViolation, match="durability"):
        inv.durability(h, {"a": MemDisk(), "b": MemDisk()})
    inv.idle_traffic(100, 3, 50, 500)
    with pytest.raises(inv.InvariantViolation, match="idle_traffic"):
        inv.idle_traffic(5000, 3, 50, 500)


# ============================================================================ whole runs


def _digest(c: Cluster) -> int:
    crc = 0
    for i in sorted(c.h.applied):
        e = c.h.applied[i]
        crc = zlib.crc32(repr((e.index, e.term, e.time_ms, e.data)).encode(), crc)
    return zlib.crc32(repr(c.stats).encode(), crc)


def test_same_seed_same_run() -> None:
    cfg = SimConfig(seed=11, steps=1500, mix="chaos", check_idle_traffic=False)
    a, b = Cluster(cfg), Cluster(cfg)
    a.run()
    b.run()
    assert _digest(a) == _digest(b)
    c = Cluster(SimConfig(seed=12, steps=1500, mix="chaos", check_idle_traffic=False))
    c.run()
    assert _digest(c) != _digest(a)


def test_replay_is_independent_of_hash_randomization() -> None:
    """Set iteration order changes with PYTHONHASHSEED; neither the core nor the driver may depend on it."""
    code = (
        "from raftstate.node.sim import Cluster, SimConfig\n"
        "from test_simulator import _digest\n"
        "c = Cluster(SimConfig(seed=5, steps=1500, mix='membership', nodes=5, check_idle_traffic=False))\n"
        "c.run(); print(_digest(c))\n"
    )
    outs = set()
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs, "PYTHONPATH": str(ROOT / "tests")}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(r.stdout.strip())
    assert len(outs) == 1, outs


def test_failure_message_names_invariant_seed_and_replay_command() -> None:
    cfg = SimConfig(seed=0, steps=2000, mix="crash", mutant="forget_vote", check_idle_traffic=False)
    with pytest.raises(SimulationFailure) as ei:
        run_seed(cfg)
    text = str(ei.value)
    assert "vote_stability" in text and "seed 0" in text
    assert "python scripts/simulate.py --seed 0 --steps 2000 --mix crash --mutant forget_vote" in text
    assert "last events:" in text


# The soak: >= 500 seeds x 2,000 steps across every mix, 3- and 5-node clusters.
SOAK_STEPS = 2000
SOAK_SEEDS = {3: 100, 5: 40}  # per mix: 7 mixes x 140 = 980 seeds
_MIX_BASE = {m: 10_000 * k for k, m in enumerate(MIXES)}


@pytest.mark.parametrize("nodes", sorted(SOAK_SEEDS))
@pytest.mark.parametrize("mix", list(MIXES))
def test_soak(mix: str, nodes: int) -> None:
    """Every invariant after every step, then the liveness phase (a leader, a final marker applied on
    every member, an idle cluster that only exchanges heartbeats), for a block of seeds."""
    cs = ClassSummary(mix, nodes)
    t0 = time.perf_counter()
    base = _MIX_BASE[mix] + 1_000 * nodes
    for seed in range(base, base + SOAK_SEEDS[nodes]):
        try:
            cs.add(run_seed(SimConfig(seed=seed, steps=SOAK_STEPS, mix=mix, nodes=nodes)))
        except SimulationFailure as f:
            cs.fail(f)
    cs.seconds = time.perf_counter() - t0
    print(cs.line())  # the run-class summary (pytest -s, or -rA)
    assert not cs.failures, f"{len(cs.failures)} seed(s) failed; the first:\n{cs.failures[0]}"
    if mix != "calm":
        assert sum(cs.faults.values()) > 0, "the mix injected no fault at all"
    assert cs.elections >= cs.seeds


# ============================================================================ mutation checks

#: mutant -> (mix, seeds within which it must be caught, invariants allowed to report it, config)
_SAFETY = {"election_safety", "log_matching", "commit_safety", "leader_completeness", "state_machine_safety"}
HUNT: dict[str, tuple[str, int, set[str], dict[str, object]]] = {
    "commit_old_term": ("crash", 30, {"commit_rule", *_SAFETY}, {}),
    "forget_vote": ("crash", 10, {"vote_stability"}, {}),
    "vote_stale_log": ("crash", 40, _SAFETY, {}),
    "read_without_readindex": ("clock", 30, {"linearizable_reads"}, {}),
    "read_before_noop": ("chaos", 80, {"linearizable_reads"}, {}),
    "ack_before_fsync": ("crash", 30, {"durability", "term_monotonic", *_SAFETY}, {}),
    "vote_before_fsync": ("crash", 30, {"term_monotonic", "vote_stability", "election_safety"}, {}),
    "leader_counts_unsynced": ("crash", 150, {"durability", *_SAFETY}, {}),
    "no_check_quorum": ("partition", 10, {"check_quorum"}, {}),
    "membership_from_deltas": (
        "membership",
        30,
        {"liveness", "idle_traffic", *_SAFETY},
        {"joiner_bootstrap": "empty", "snapshots": False},
    ),
}


def test_every_mutant_has_a_hunt() -> None:
    assert set(HUNT) == set(MUTANTS)


def test_mutants_override_methods_the_core_still_has() -> None:
    """A renamed core method would silently turn its mutant into the real core."""
    from raftstate.raft import RaftNode

    for name, cls in MUTANTS.items():
        overrides = [m for m in vars(cls) if callable(vars(cls)[m]) and not m.startswith("__")]
        assert overrides, name
        for m in overrides:
            assert callable(getattr(RaftNode, m, None)), f"mutant {name} overrides {m}, gone from RaftNode"


@pytest.mark.parametrize("mutant", sorted(HUNT))
def test_mutant_is_caught(mutant: str) -> None:
    mix, max_seeds, expected, extra = HUNT[mutant]
    for seed in range(max_seeds):
        cfg = SimConfig(seed=seed, steps=SOAK_STEPS, mix=mix, mutant=mutant, **extra)  # type: ignore[arg-type]
        try:
            run_seed(cfg)
        except SimulationFailure as f:
            assert f.invariant in expected, f"{mutant} was reported by an unexpected invariant:\n{f}"
            return
    pytest.fail(f"mutant {mutant} survived {max_seeds} seeds of mix {mix}")


@pytest.mark.parametrize("snapshots", [True, False])
def test_joiners_that_know_nobody(snapshots: bool) -> None:
    """A node added to a running cluster may start knowing no member at all; catching up by log
    replay alone (no snapshot to carry the membership), it must still learn the whole membership —
    a joiner that counted only itself would elect itself alone after its promotion."""
    for seed in range(700_000, 700_030):
        cfg = SimConfig(
            seed=seed, steps=SOAK_STEPS, mix="membership", joiner_bootstrap="empty", snapshots=snapshots
        )
        run_seed(cfg)


LONG_STEPS = 20_000


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("mix", ["chaos", "membership", "crash"])
def test_long_runs(mix: str, nodes: int) -> None:
    """Fewer seeds, ten times the steps: many snapshots, membership churn and terms per run."""
    cs = ClassSummary(mix, nodes)
    for seed in range(900_000 + 100 * nodes, 900_000 + 100 * nodes + 5):
        try:
            cs.add(run_seed(SimConfig(seed=seed, steps=LONG_STEPS, mix=mix, nodes=nodes)))
        except SimulationFailure as f:
            cs.fail(f)
    print(cs.line())
    assert not cs.failures, f"{len(cs.failures)} seed(s) failed; the first:\n{cs.failures[0]}"


def test_simulate_cli_replays_and_soaks(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("simulate_cli", ROOT / "scripts" / "simulate.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--seed", "3", "--steps", "500", "--mix", "calm"]) == 0
    assert "seed 3 passed" in capsys.readouterr().out
    assert (
        cli.main(["--seeds", "2", "--steps", "500", "--mix", "crash,partition", "--nodes", "3,5", "-q"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("seeds=2 ") == 4 and "faults:" in out
    # a mutant soak "fails" when the mutant survives: here it is caught, with a replay line
    assert cli.main(["--seeds", "3", "--mix", "crash", "--mutant", "forget_vote", "--stop-on-failure"]) == 0
    assert "replay: python scripts/simulate.py --seed 0 --steps 2000 --mix crash --mutant forget_vote" in (
        capsys.readouterr().out
    )
