"""Background bulk for a chaos run (``--preload N``): N webhook dedupe markers loaded before the
workload and the faults start, so that compactions, store copies and a wiped follower's catch-up
happen at a realistic size.

The markers are written by the bench's load generator (``python -m raftstate.node.bench.loadgen
--workload markers``, over ``/v1/stream``, many puts in flight) in a process of its own: keys
``webhooks:<provider>:evt_<16 hex>`` in random order, a small value, a 7-day ttl
(``node/bench/targets.py``). A failed put is repeated until acknowledged, so when the loader is
done every one of the N keys was acknowledged, and each is a pure function of the run name and
its number: the run reads a sample of them back at the end (the ``preload`` check). They are not
in the history (the other checkers never see them); the replica-digest check covers all of them.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftstate.client import AsyncClient
from raftstate.node.bench.targets import MARKER_VALUE, marker_key
from raftstate.node.ops.local_cluster import LocalCluster

#: puts in flight while loading (the stream target multiplexes them over one socket per node)
CONCURRENCY = 256
#: how many preloaded keys the end of the run reads back
SAMPLE = 1000
#: the loader's progress is printed this often
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Preloaded:
    run: str  #: the loader's run name: with a number, it names a key (``marker_key(run, i)``)
    keys: int  #: acknowledged, all of ``marker_key(run, 0 .. keys - 1)``
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)  #: failed puts (each one repeated), by code

    @property
    def value(self) -> Any:
        return MARKER_VALUE

    def describe(self) -> str:
        rate = self.keys / self.seconds if self.seconds > 0 else 0.0
        errs = f", {sum(self.errors.values())} puts repeated ({self.errors})" if self.errors else ""
        return f"preload: {self.keys:,} markers in {self.seconds:.0f}s ({rate:,.0f}/s){errs}"


def load(cluster: LocalCluster, n: int, run: str, say: Callable[[str], None]) -> Preloaded:
    """Write ``n`` markers of run ``run`` into ``cluster`` and wait until every one is acknowledged.
    Raises RuntimeError if the loader fails or stops short."""
    endpoints = ",".join(f"http://{a}" for a in cluster.addr.values())
    cmd = [
        sys.executable, "-m", "raftstate.node.bench.loadgen", "--system", "raftstate-stream",
        "--endpoints", endpoints, "--workload", "markers", "--keys", str(n),
        "--concurrency", str(CONCURRENCY), "--warmup", "0", "--run", run,
        "--duration", str(3600 + n // 100),  # a bound, not a goal: it stops once all are acknowledged
    ]  # fmt: skip
    started = time.monotonic()
    first = _applied(cluster)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            while True:
                try:
                    proc.wait(timeout=PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:
                    now = _applied(cluster)
                    say(
                        f"   preload: ~{max(0, now - first):,} of {n:,} applied after "
                        f"{time.monotonic() - started:.0f}s"
                    )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"the preload's load generator failed (exit {proc.returncode}): {stderr[-2000:]}")
    doc = json.loads(stdout)
    if doc["ops"] != n:
        raise RuntimeError(f"the preload stopped at {doc['ops']} of {n} keys; errors {doc['errors']}")
    return Preloaded(run, n, time.monotonic() - started, dict(doc["errors"]))


def _applied(cluster: LocalCluster) -> int:
    """The highest applied index a node reports (0 if none answers)."""
    best = 0
    for nid in cluster.ids:
        try:
            best = max(best, int(cluster.status(nid)["applied_index"]))
        except Exception:
            continue
    return best


def sample_keys(pre: Preloaded, seed: int, k: int = SAMPLE) -> list[str]:
    """``k`` of the preloaded keys, drawn with the run's seed."""
    rng = random.Random(f"preload-sample-{seed}")
    return [marker_key(pre.run, i) for i in rng.sample(range(pre.keys), min(k, pre.keys))]


async def read_back(cluster: LocalCluster, keys: list[str], timeout_s: float) -> dict[str, Any]:
    """Linearizable reads of ``keys``: key -> value (None: missing)."""
    endpoints = [f"http://{a}" for a in cluster.addr.values()]
    found: dict[str, Any] = {}
    async with AsyncClient(endpoints, timeout=timeout_s) as client:
        sem = asyncio.Semaphore(16)

        async def one(key: str) -> None:
            async with sem:
                entry = await client.get_entry(key)
                found[key] = None if entry is None else entry.value

        await asyncio.gather(*(one(k) for k in keys))
    return found
