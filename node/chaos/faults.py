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
wipe-follower  the same procedure, always on a follower: the wiped node catches up from a copy of
               the leader's store streamed to it while the workload runs; how long it took (from
               ``--join`` until it applied what was committed when it started) is measured
kill-receiver  a follower is kept down until the leader's log no longer reaches it (compacted past
               its last entry), restarted, and kill -9'd again WHILE it receives the copy of the
               store it now needs (its ``incoming-*.tmp`` growing; the links to it are slowed so
               the transfer lasts seconds) or right after it received it, while installing it
               (its log says ``received snapshot``); restarted after the window
kill-sender    the same lagging follower set-up; kill -9 of the LEADER while it sends the copy
               (its log says ``sends its state ... to <follower>``, links slowed as above);
               restarted after the window
=============  ==============================================================================

Adding a kind is one function ``(injector, rng, duration_s) -> description`` in ``FAULTS``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from raftstate.node.chaos.proxy import Link, ProxyLayer
from raftstate.node.ops.local_cluster import LocalCluster

T = TypeVar("T")


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
        #: one line per node that was wiped and caught up again: how long it took, and how
        self.catch_ups: list[str] = []
        #: where the catch-up faults landed ("killed while receiving", ...): proof they happened
        self.landed: Counter[str] = Counter()
        #: the wipe procedure's waits grow with the state the wiped node must receive
        self.preloaded_keys = 0

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
    return _replace_node(inj, nid, "leader" if nid == leader else "follower", duration_s, "membership")


def wipe_follower(inj: Injector, rng: random.Random, duration_s: float) -> str:
    leader = inj.cluster.leader()
    nid = rng.choice([n for n in inj.ids if n != leader])
    return _replace_node(inj, nid, "follower", duration_s, "wipe-follower")


def _replace_node(inj: Injector, nid: str, how: str, duration_s: float, kind: str) -> str:
    """docs/operations.md "Replacing a node / a wiped disk", through the CLI, on a live cluster."""
    deadline = time.monotonic() + 30
    tries: list[str] = []
    while True:  # refused while a quorum of the rest is not reachable (a previous fault healing)
        rc, out = _ops(inj, 40, "member", "remove", "--id", nid)
        if rc == 0:
            break
        if tries and f"{nid} is not a member" in out:
            break  # an earlier try was committed although its answer was lost (a leader change)
        tries.append(f"rc {rc}: {out.splitlines()[-1:]}")
        if time.monotonic() > deadline:
            return f"{kind}: remove of {how} {nid} refused, skipped: {'; '.join(tries)}"
        time.sleep(1.0)
    inj.kill9(nid)
    shutil.rmtree(inj.cluster.root / "data" / nid, ignore_errors=True)
    inj.wait(duration_s)
    member = next(n for n in inj.ids if n != nid and inj.cluster.alive(n))
    wait_s = 90 + inj.preloaded_keys / 5000  # a copy of a big store takes a while to arrive
    marks = {n: _log_mark(inj, n) for n in inj.ids}
    target = _commit_index(inj)
    started = time.monotonic()
    with ThreadPoolExecutor(1, thread_name_prefix="chaos-catch-up") as pool:
        watch = pool.submit(_catch_up, inj, nid, target, started + wait_s + 60)
        # Same data dir as cluster.yaml names: later faults restart it with --config like any node.
        inj.cluster.join(nid, member, inj.cluster.root / "data" / nid, inj.node_env[nid])
        add = ["member", "add", "--id", nid, "--address", inj.cluster.addr[nid], "--wait", f"{wait_s:.0f}"]
        for _ in range(3):  # `member add` resumes an interrupted add
            rc, out = _ops(inj, wait_s + 60, *add)
            if rc == 0:
                break
        else:
            raise RuntimeError(f"{kind} fault: `member add --id {nid}` failed after it was wiped: {out}")
        applied_at, replicating_at = watch.result()
    how_caught_up = _copy_story(inj, nid, marks)
    if applied_at is None:
        took = f"NOT caught up with index {target} within {wait_s + 60:.0f}s"
    elif replicating_at is None:
        took = (
            f"applied index {target} {applied_at - started:.1f}s after --join but was NOT following "
            f"the leader's log within {wait_s + 60:.0f}s"
        )
    else:
        took = (
            f"caught up: applied index {target} {applied_at - started:.1f}s after --join, following "
            f"the leader's log after {replicating_at - started:.1f}s"
        )
    inj.catch_ups.append(f"{kind}: wiped {how} {nid} {took}; {how_caught_up}")
    if how_caught_up.startswith("store copy installed"):
        inj.landed["wiped node installed a store copy"] += 1
    return (
        f"{kind}: removed {how} {nid}, wiped it, --join via {member}, re-added as voter; {took} "
        f"({how_caught_up})"
    )


# ---------------------------------------------------------------------- while a store copy travels

#: the driver's and the receiver's log lines (node/driver.py, node/peers/snapshot_transfer.py)
_SENDS = r"node (\S+) sends its state \(index (\d+), (\d+) bytes\) to {nid}\b"
_SENT = r"node (\S+) sent its state at index \d+ to {nid} "
_RECEIVED = "received snapshot "
_INSTALLED = re.compile(
    r"installed a snapshot at index (\d+) from the leader: its state store, at index (\d+)"
)
#: a transfer is slowed to last about this long, so that a kill lands inside it
SLOW_TRANSFER_S = 3.0


_ANY_SENDS = re.compile(r"sends its state \(index \d+, (\d+) bytes\) to \S+")


def copies_sent(cluster: LocalCluster) -> tuple[int, int]:
    """Copies of the store the nodes have begun to send so far (every log, whole), and their bytes.
    A follower that keeps falling behind the leader's compaction needs one after another."""
    count = size = 0
    for nid in cluster.ids:
        try:
            text = (cluster.root / f"{nid}.log").read_text(errors="replace")
        except FileNotFoundError:
            continue
        for m in _ANY_SENDS.finditer(text):
            count += 1
            size += int(m.group(1))
    return count, size


def _log_mark(inj: Injector, nid: str) -> int:
    """Where ``nid``'s log ends now (logs are appended to across restarts)."""
    try:
        return (inj.cluster.root / f"{nid}.log").stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(inj: Injector, nid: str, mark: int) -> str:
    try:
        with open(inj.cluster.root / f"{nid}.log", "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _commit_index(inj: Injector) -> int:
    """The highest commit index any live node reports (the leader's, normally)."""
    best = 0
    for n in inj.ids:
        if inj.cluster.alive(n):
            try:
                best = max(best, int(inj.cluster.status(n)["commit_index"]))
            except Exception:
                continue
    return best


def _catch_up(inj: Injector, nid: str, index: int, deadline: float) -> tuple[float | None, float | None]:
    """When ``nid`` first reported an applied index >= ``index`` (the commit index when it started),
    and when after that the leader first replicated to it from its log (progress ``replicate``,
    match >= ``index``) rather than sending it yet another copy of the store: monotonic times, None
    if not by the deadline."""
    applied_at = replicating_at = None
    while replicating_at is None and time.monotonic() < deadline:
        now = time.monotonic()
        if applied_at is None and _quiet(lambda: int(inj.cluster.status(nid)["applied_index"]) >= index):
            applied_at = now
        if applied_at is not None and _quiet(lambda: _replicating(inj, nid, index)):
            replicating_at = now
        time.sleep(0.1)
    return applied_at, replicating_at


def _replicating(inj: Injector, nid: str, index: int) -> bool | None:
    leader = inj.cluster.leader()
    if leader is None or leader == nid:
        return None
    pr = inj.cluster.status(leader)["progress"].get(nid)
    return bool(pr and pr["state"] == "replicate" and pr["match"] >= index) or None


def _copy_story(inj: Injector, nid: str, marks: dict[str, int]) -> str:
    """What the logs since ``marks`` say about copies of the store sent to ``nid``."""
    pattern = re.compile(_SENDS.format(nid=re.escape(nid)))
    sends = [
        (n, m) for n in inj.ids if n != nid for m in pattern.finditer(_log_since(inj, n, marks.get(n, 0)))
    ]
    installs = _INSTALLED.findall(_log_since(inj, nid, marks.get(nid, 0)))
    if not installs:
        return f"no store copy installed ({len(sends)} sends began)"
    senders = Counter(n for n, _ in sends)
    size = f"{int(sends[-1][1].group(3)) / 1e6:.1f} MB" if sends else "size not logged"
    return (
        f"store copy installed {len(installs)}x (last at index {installs[-1][1]}); "
        f"sends of a {size} copy begun: {len(sends)}, by {', '.join(sorted(senders))}"
    )


def _incoming(inj: Injector, nid: str) -> int | None:
    """Bytes of the store copy ``nid`` is receiving right now (its ``incoming-*.tmp``), or None."""
    for f in (inj.cluster.root / "data" / nid / "state").glob("incoming-*.tmp"):
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            continue
        if size > 0:
            return size
    return None


def _poll(inj: Injector, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.01) -> T | None:
    """The first non-None answer of ``probe`` within ``timeout_s`` (None: none, or the run stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not inj.stop.is_set():
        out = probe()
        if out is not None:
            return out
        time.sleep(every_s)
    return None


def _lag_behind_compaction(inj: Injector, rng: random.Random) -> tuple[str, str] | None:
    """kill -9 a follower and keep it down until the leader has compacted its log past the
    follower's last entry: from then on the follower can only catch up from a copy of the store.
    Returns (leader, follower), or None (no leader; the follower is then back up)."""
    leader = _poll(inj, lambda: _quiet(inj.cluster.leader), 20, every_s=0.2)  # a fault may just have healed
    if leader is None:
        return None
    nid = rng.choice([n for n in inj.ids if n != leader])
    try:
        last = int(inj.cluster.status(nid)["last_index"])
    except Exception:
        last = _commit_index(inj)
    inj.kill9(nid)

    def compacted_past() -> str | None:
        lead = inj.cluster.leader()
        if lead is None or lead == nid:
            return None
        # compacted_index: behind a store checkpoint the leader keeps a tail of entries (catch-up)
        return lead if int(inj.cluster.status(lead)["compacted_index"]) > last else None

    lead = _poll(inj, lambda: _quiet(compacted_past), 60, every_s=0.2)
    if lead is None:
        inj.restart(nid)
        return None
    return lead, nid


def _quiet(probe: Callable[[], T | None]) -> T | None:
    try:
        return probe()
    except Exception:
        return None


def _slow_links_to(inj: Injector, leader: str, nid: str) -> list[tuple[str, str]]:
    """Slow every link into ``nid`` so that a copy of ``leader``'s store takes ~SLOW_TRANSFER_S."""
    size = 0
    for f in (inj.cluster.root / "data" / leader / "state").glob("state.db*"):
        try:
            size += f.stat().st_size
        except FileNotFoundError:  # the -wal or -shm of a store being swapped
            continue
    links = [(n, nid) for n in inj.ids if n != nid]
    inj.proxy.slow(links, max(256 * 1024, size / SLOW_TRANSFER_S))
    return links


def kill_receiver(inj: Injector, rng: random.Random, duration_s: float) -> str:
    mode = rng.choice(["receiving", "installing"])
    lagging = _lag_behind_compaction(inj, rng)
    if lagging is None:
        return "kill-receiver: skipped (no leader, or its log not compacted past the follower in time)"
    leader, nid = lagging
    mark = _log_mark(inj, nid)
    links = _slow_links_to(inj, leader, nid) if mode == "receiving" else []
    try:
        inj.restart(nid)
        timeout = 60 + inj.preloaded_keys / 10_000
        if mode == "receiving":
            got = _poll(inj, lambda: _incoming(inj, nid), timeout)
        else:
            got = _poll(inj, lambda: 1 if _RECEIVED in _log_since(inj, nid, mark) else None, timeout)
        inj.kill9(nid)
    finally:
        inj.proxy.heal(links)
    installed = bool(_INSTALLED.search(_log_since(inj, nid, mark)))
    if got is None:
        what = f"no store copy arrived within {timeout:.0f}s"
    elif mode == "receiving":
        what = f"while receiving a store copy ({got / 1e6:.1f} MB of it written)"
        inj.landed["follower killed while receiving a store copy"] += 1
    elif installed:
        what = "after it received and installed a store copy"
        inj.landed["follower killed just after installing a store copy"] += 1
    else:
        what = "after it received a store copy, before it was installed"
        inj.landed["follower killed between receiving and installing a store copy"] += 1
    inj.wait(duration_s)
    inj.restart(nid)
    return f"kill-receiver: {nid} lagged past the leader {leader}'s compaction, restarted, kill -9 {what}"


def kill_sender(inj: Injector, rng: random.Random, duration_s: float) -> str:
    lagging = _lag_behind_compaction(inj, rng)
    if lagging is None:
        return "kill-sender: skipped (no leader, or its log not compacted past the follower in time)"
    leader, nid = lagging
    marks = {n: _log_mark(inj, n) for n in inj.ids}
    sends = re.compile(_SENDS.format(nid=re.escape(nid)))

    def sending() -> str | None:
        return next((n for n in inj.ids if n != nid and sends.search(_log_since(inj, n, marks[n]))), None)

    links = _slow_links_to(inj, leader, nid)
    try:
        inj.restart(nid)
        sender = _poll(inj, sending, 60 + inj.preloaded_keys / 10_000, every_s=0.02)
        receiving = _incoming(inj, nid)
        if sender is not None:
            inj.kill9(sender)
    finally:
        inj.proxy.heal(links)
    if sender is None:
        return f"kill-sender: no copy of the store was sent to {nid}: nothing killed"
    done = re.search(_SENT.format(nid=re.escape(nid)), _log_since(inj, sender, marks[sender]))
    if done:
        what = "just after it had sent"
    else:
        what = "while it sent" + (f" ({receiving / 1e6:.1f} MB had arrived)" if receiving else "")
        inj.landed["leader killed while sending a store copy"] += 1
    inj.wait(duration_s)
    inj.restart(sender)
    return f"kill-sender: kill -9 of {sender} {what} a copy of its store to {nid} (lagging past compaction)"


FAULTS: dict[str, Callable[[Injector, random.Random, float], str]] = {
    "kill": kill,
    "pause": pause,
    "partition": partition,
    "clock": clock,
    "restart-all": restart_all,
    "membership": membership,
    "wipe-follower": wipe_follower,
    "kill-receiver": kill_receiver,
    "kill-sender": kill_sender,
}
#: how long each kind's window lasts, (min, max) seconds
DURATION_S: dict[str, tuple[float, float]] = {
    "kill": (1.0, 4.0),
    "pause": (1.0, 4.0),
    "partition": (2.0, 6.0),
    "clock": (3.0, 6.0),
    "restart-all": (0.2, 1.0),
    "membership": (0.5, 2.0),  #: how long the wiped node stays down; remove/add take seconds more
    "wipe-follower": (0.5, 2.0),  #: likewise; and its catch-up, however long that takes
    "kill-receiver": (1.0, 3.0),  #: down after the kill; waiting for the compaction takes seconds more
    "kill-sender": (1.0, 3.0),  #: likewise
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
