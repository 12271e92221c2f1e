"""Faults on a seeded schedule, injected into real node processes and real TCP links.

The schedule (which fault, when, for how long, and every random choice inside it) comes from the
run's seed; *which node* "the leader" is, is decided by the cluster at run time, so a replay repeats
the schedule, not necessarily every interleaving. One fault at a time, with quiet gaps between.

=============  ==============================================================================
kind           what happens
=============  ==============================================================================
kill           kill -9 of the leader, a random node or a majority; restarted after the window
pause          SIGSTOP of the leader or a random node; SIGCONT after the window
partition      proxied peer links cut: majority/minority, isolated leader, bridge (one node
               still talks to both sides), or one-way (a node cannot send, or cannot receive)
clock          the leader's clock jumps forward, later backward, by seconds; then back to 0
restart-all    every node kill -9'd at once, then all restarted
membership     the operator's replace procedure (docs/operations.md) on a live cluster, through the
               CLI: ``raftstate member remove`` of the leader or a follower, kill -9 it, wipe
               its data dir, start it again with ``raftstate node --join`` at the SAME address
               (the workload's endpoint list stays valid), ``raftstate member add`` (learner ->
               caught up -> voter). A refused remove skips the fault; a failed re-add fails the run
=============  ==============================================================================

Adding a kind is one function ``(injector, rng, duration_s) -> description`` in ``FAULTS``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raftstate.node.chaos.proxy import Link, ProxyLayer
from raftstate.node.ops.local_cluster import LocalCluster


@dataclass(frozen=True, slots=True)
class PlannedFault:
    kind: str
    at_s: float  #: seconds after the workload started
    duration_s: float
    seed: int  #: drives every choice inside the fault


@dataclass(slots=True)
class FaultWindow:
    kind: str
    start_t: float  #: time.monotonic()
    end_t: float
    detail: str


class Injector:
    """Applies faults to a running cluster; remembers what it did (windows) and what to heal."""

    def __init__(
        self,
        cluster: LocalCluster,
        proxy: ProxyLayer,
        clock_files: dict[str, Path],
        node_env: dict[str, dict[str, str]],
        stop: threading.Event,
    ) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.clock_files = clock_files
        self.node_env = node_env
        self.stop = stop
        self.windows: list[FaultWindow] = []
        self.counts: Counter[str] = Counter()
        self.ahead_s = 0.0  #: largest forward clock offset injected (for the TTL checker)
        self.back_s = 0.0  #: largest backward clock offset injected
        self.paused: set[str] = set()

    # ------------------------------------------------------------------ primitives

    def cluster_env(self) -> dict[str, str]:
        """The environment for operator commands (the cluster's, e.g. a token)."""
        return {**os.environ, **self.cluster.env}

    @property
    def ids(self) -> list[str]:
        return self.cluster.ids

    def leader_or_random(self, rng: random.Random) -> tuple[str, str]:
        leader = self.cluster.leader()
        if leader is not None and rng.random() < 0.6:
            return leader, "leader"
        return rng.choice(self.ids), "random"

    def kill9(self, nid: str) -> None:
        if self.cluster.alive(nid):
            self.cluster.procs[nid].send_signal(signal.SIGCONT)
            self.cluster.kill(nid, signal.SIGKILL)
        self.paused.discard(nid)

    def restart(self, nid: str) -> None:
        if not self.cluster.alive(nid):
            self.cluster.start(nid, env=self.node_env[nid])

    def pause(self, nid: str) -> None:
        self.cluster.kill(nid, signal.SIGSTOP)
        self.paused.add(nid)

    def resume(self, nid: str) -> None:
        if self.cluster.alive(nid):
            self.cluster.kill(nid, signal.SIGCONT)
        self.paused.discard(nid)

    def set_clock(self, nid: str, offset_s: float) -> None:
        if offset_s > 0:
            self.ahead_s = max(self.ahead_s, offset_s)
        else:
            self.back_s = max(self.back_s, -offset_s)
        self.clock_files[nid].write_text(str(round(offset_s * 1000)))

    def wait(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def heal_all(self) -> None:
        """Undo everything: links, pauses, clocks, dead nodes."""
        self.proxy.heal()
        for nid in self.ids:
            self.clock_files[nid].write_text("0")
            self.resume(nid)
            self.restart(nid)

    # ------------------------------------------------------------------ running a schedule

    def run(self, plan: list[PlannedFault], t0: float) -> None:
        for fault in plan:
            if self.stop.wait(max(0.0, t0 + fault.at_s - time.monotonic())):
                return
            fn = FAULTS[fault.kind]
            start, detail = time.monotonic(), "(failed to inject)"
            try:
                detail = fn(self, random.Random(fault.seed), fault.duration_s)
            finally:
                self.windows.append(FaultWindow(fault.kind, start, time.monotonic(), detail))
                self.counts[fault.kind] += 1


# ---------------------------------------------------------------------- the faults


def kill(inj: Injector, rng: random.Random, duration_s: float) -> str:
    mode = rng.choice(["leader", "random", "majority"])
    if mode == "majority":
        targets = rng.sample(inj.ids, len(inj.ids) // 2 + 1)
    elif mode == "leader":
        leader = inj.cluster.leader()
        targets = [leader] if leader else [rng.choice(inj.ids)]
    else:
        targets = [rng.choice(inj.ids)]
    for nid in targets:
        inj.kill9(nid)
    inj.wait(duration_s)
    for nid in targets:
        inj.restart(nid)
    return f"kill -9 {mode}: {','.join(targets)}"


def pause(inj: Injector, rng: random.Random, duration_s: float) -> str:
    nid, how = inj.leader_or_random(rng)
    inj.pause(nid)
    inj.wait(duration_s)
    inj.resume(nid)
    return f"SIGSTOP {how} {nid}"


def _both(a: list[str], b: list[str]) -> list[Link]:
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]


def partition(inj: Injector, rng: random.Random, duration_s: float) -> str:
    ids = list(inj.ids)
    mode = rng.choice(["majority-minority", "isolated-leader", "bridge", "one-way"])
    if mode == "isolated-leader":
        leader = inj.cluster.leader() or rng.choice(ids)
        others = [n for n in ids if n != leader]
        links, detail = _both([leader], others), f"{leader} | {','.join(others)}"
    elif mode == "bridge":
        rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        half = len(rest) // 2
        links = _both(rest[:half], rest[half:])
        detail = f"{','.join(rest[:half])} | {','.join(rest[half:])} (bridge {bridge})"
    elif mode == "one-way":
        nid, how = inj.leader_or_random(rng)
        others = [n for n in ids if n != nid]
        if rng.random() < 0.5:
            links, detail = [(nid, o) for o in others], f"{how} {nid} cannot send"
        else:
            links, detail = [(o, nid) for o in others], f"{how} {nid} cannot receive"
    else:
        rng.shuffle(ids)
        minority = ids[: (len(ids) - 1) // 2]
        majority = ids[len(minority) :]
        links, detail = _both(minority, majority), f"{','.join(minority)} | {','.join(majority)}"
    inj.proxy.cut(links)
    inj.wait(duration_s)
    inj.proxy.heal(links)
    return f"partition {mode}: {detail}"


def clock(inj: Injector, rng: random.Random, duration_s: float) -> str:
    nid = inj.cluster.leader() or rng.choice(inj.ids)
    forward, backward = rng.uniform(2, 5), -rng.uniform(2, 5)
    inj.set_clock(nid, forward)
    inj.wait(duration_s / 2)
    inj.set_clock(nid, backward)
    inj.wait(duration_s / 2)
    inj.clock_files[nid].write_text("0")
    return f"clock {nid}: {forward:+.1f}s then {backward:+.1f}s"


def restart_all(inj: Injector, rng: random.Random, duration_s: float) -> str:
    for nid in inj.ids:
        inj.kill9(nid)
    inj.wait(duration_s)
    for nid in inj.ids:
        inj.restart(nid)
    return "kill -9 all, restart all"


def _ops(inj: Injector, timeout_s: float, *argv: str) -> tuple[int, str]:
    """One ``raftstate`` operator command, as an operator runs it, against the cluster's addresses."""
    eps = ",".join(inj.cluster.addr[n] for n in inj.ids)
    cmd = [sys.executable, "-m", "raftstate.node", *argv, "--endpoints", eps, "--timeout", "20"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=inj.cluster_env())
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)}: no answer within {timeout_s:.0f}s"
    return done.returncode, (done.stdout + done.stderr).strip()


def membership(inj: Injector, rng: random.Random, duration_s: float) -> str:
    leader = inj.cluster.leader()
    followers = [n for n in inj.ids if n != leader]
    nid = leader if leader is not None and rng.random() < 0.4 else rng.choice(followers)
    how = "leader" if nid == leader else "follower"
    deadline = time.monotonic() + 30
    while True:  # refused while a quorum of the rest is not reachable (a previous fault healing)
        rc, out = _ops(inj, 40, "member", "remove", "--id", nid)
        if rc == 0:
            break
        if time.monotonic() > deadline:
            return f"membership: remove of {how} {nid} refused, skipped: {out.splitlines()[-1:]}"
        time.sleep(1.0)
    inj.kill9(nid)
    shutil.rmtree(inj.cluster.root / "data" / nid, ignore_errors=True)
    inj.wait(duration_s)
    member = next(n for n in inj.ids if n != nid and inj.cluster.alive(n))
    # Same data dir as cluster.yaml names: later faults restart it with --config like any node.
    inj.cluster.join(nid, member, inj.cluster.root / "data" / nid, inj.node_env[nid])
    for _ in range(3):  # `member add` resumes an interrupted add
        rc, out = _ops(
            inj, 150, "member", "add", "--id", nid, "--address", inj.cluster.addr[nid], "--wait", "90"
        )
        if rc == 0:
            return f"membership: removed {how} {nid}, wiped it, --join via {member}, re-added as voter"
    raise RuntimeError(f"membership fault: `member add --id {nid}` failed after the node was wiped: {out}")


FAULTS: dict[str, Callable[[Injector, random.Random, float], str]] = {
    "kill": kill,
    "pause": pause,
    "partition": partition,
    "clock": clock,
    "restart-all": restart_all,
    "membership": membership,
}
#: how long each kind's window lasts, (min, max) seconds
DURATION_S: dict[str, tuple[float, float]] = {
    "kill": (1.0, 4.0),
    "pause": (1.0, 4.0),
    "partition": (2.0, 6.0),
    "clock": (3.0, 6.0),
    "restart-all": (0.2, 1.0),
    "membership": (0.5, 2.0),  #: how long the wiped node stays down; remove/add take seconds more
}


def plan(kinds: list[str], duration_s: float, seed: int) -> list[PlannedFault]:
    """The seeded schedule: faults one after another with 1-3 s of quiet between them, ending at
    least 2 s before the workload stops. Every kind comes once (in a seeded order) before any
    comes twice, so a short run still mixes all of them."""
    rng = random.Random(seed)
    out: list[PlannedFault] = []
    first = rng.sample(kinds, len(kinds))
    t = rng.uniform(1.0, 3.0)
    while True:
        kind = first[len(out)] if len(out) < len(first) else rng.choice(kinds)
        lo, hi = DURATION_S[kind]
        d = rng.uniform(lo, hi)
        if t + d > duration_s - 2:
            return out
        out.append(PlannedFault(kind, round(t, 3), round(d, 3), rng.randrange(2**31)))
        t += d + rng.uniform(1.0, 3.0)
