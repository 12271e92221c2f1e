"""``bench.py --markers N``: millions of webhook dedupe markers, as users write them.

A fresh 3-node cluster (temp dir, fsync on, default settings). The load generator
(``python -m raftstate.node.bench.marker_load``, its own process) writes N RANDOM keys
``webhooks:<provider>:evt_<16 hex>`` with a small value and a 7-day ttl through
``raftstate.client.AsyncClient`` from ``--concurrency`` tasks. Per ``--step`` keys this prints one
row: keys so far, puts/s and p50/p99 put latency of that step, each node's RssAnon and RssFile
(/proc/<pid>/status), each node's data dir bytes (allocated blocks, like ``du``), term changes since
the start (max term across nodes minus the starting one). Then:

- restart to ready: kill -9 of a follower, restart; until its /ready says ready and its applied
  index reaches the leader's commit index at the kill;
- a wiped follower catching up, under a steady write load (``--steady-rate`` puts/s through the
  client): kill -9, wipe its data dir, and the documented replacement (docs/operations.md,
  "Replacing a node": ``member remove``, ``node --join`` with the same id, address and data dir,
  ``member add``); catch-up time, term changes, write p50/p99 before and during;
- with ``--expiry-storm M``: M markers sharing one ``expires_at``, written after a steady window;
  from that instant until every node's key count is back to what it was (the leader's sweeper
  removed them all), term changes and write p99 during vs before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from raftstate.node.bench.clusters import raftstate_endpoints, wait_ready
from raftstate.node.bench.loadgen import percentiles
from raftstate.node.bench.report import markdown_table, plot_markers
from raftstate.node.bench.scale import caught_up, max_term, proc_mb, restart_to_ready, wait_all_applied
from raftstate.node.ops.local_cluster import HttpError, LocalCluster

#: the load generator runs in its own process (node/bench/marker_load.py)
MARKER_LOAD = ("-m", "raftstate.node.bench.marker_load")
#: fixed markers the steady load of the expiry storm overwrites (created before keys are counted)
STEADY_POOL = 1000

HEADERS = [
    "keys",
    "puts/s",
    "p50 ms",
    "p99 ms",
    "RssAnon MB",
    "RssFile MB",
    "data dir MB",
    "term changes",
    "leader",
    "errors",
]


# --------------------------------------------------------------------------- measuring the nodes


def data_dir(c: LocalCluster, nid: str) -> Path:
    return c.root / "data" / nid


def du_bytes(path: Path) -> int:
    """Bytes allocated to the files below ``path`` (``du``'s count; files removed meanwhile skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def node_state(c: LocalCluster, nid: str) -> dict[str, Any] | None:
    """A node's /status, or None when it is down or does not answer within 2 s."""
    if not c.alive(nid):
        return None
    try:
        return c.status(nid, timeout=2.0)
    except (OSError, HttpError, ValueError):
        return None


def key_count(st: dict[str, Any] | None) -> int | None:
    """Keys a node holds, expired but not yet swept ones included (None if it does not say)."""
    if st is None or not isinstance(st.get("state"), dict):
        return None
    n = st["state"].get("keys")
    return int(n) if isinstance(n, int) else None


def sample(c: LocalCluster, term0: int) -> dict[str, Any]:
    """Each node's memory, data dir bytes; term changes since ``term0``; the leader."""
    anon, file_, data = {}, {}, {}
    terms, leader = [], None
    for nid in c.ids:
        if c.alive(nid):
            mem = proc_mb(c.procs[nid].pid, "RssAnon", "RssFile")
            anon[nid], file_[nid] = mem["RssAnon"], mem["RssFile"]
        data[nid] = du_bytes(data_dir(c, nid))
        st = node_state(c, nid)
        if st is not None:
            terms.append(int(st["term"]))
            if st["role"] == "leader":
                leader = nid
    return {
        "rss_anon_mb": anon,
        "rss_file_mb": file_,
        "data_bytes": data,
        "term_changes": max(terms) - term0 if terms else None,
        "leader": leader,
    }


# --------------------------------------------------------------------------- the load generator


class Load:
    """One marker_load process; its stdout is one JSON document a line. Closing its stdin stops a
    steady load (and it stops by itself if this process dies)."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )

    def line(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        raw = out.readline()
        if not raw:
            self.proc.wait(timeout=30)
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the load generator stopped (exit {self.proc.returncode}): {tail}")
        doc: dict[str, Any] = json.loads(raw)
        return doc

    def finish(self) -> dict[str, Any]:
        """Close its stdin, read its last line, wait for it (nothing answered if it had died)."""
        if self.proc.poll() is not None:
            return {"samples": [], "errors": {f"load generator exited {self.proc.returncode}": 1}}
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        doc = self.line()
        self.proc.wait(timeout=60)
        return doc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def load_cmd(mode: str, endpoints: list[str], args: argparse.Namespace, seed: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        *MARKER_LOAD,
        mode,
        "--endpoints",
        ",".join(endpoints),
        "--value-bytes",
        str(args.value_bytes),
        "--ttl",
        str(args.ttl),
        "--seed",
        f"{seed}-{os.getpid()}-{time.time_ns()}",
        *extra,
    ]


def fmt_row(r: dict[str, Any], nodes: list[str]) -> list[str]:
    def per_node(values: dict[str, float], scale: float = 1.0, prec: int = 0) -> str:
        return " / ".join(f"{values[n] / scale:.{prec}f}" if n in values else "-" for n in nodes)

    def ms(x: float | None) -> str:
        return f"{x:.1f}" if x is not None else "-"

    tc = r["term_changes"]
    return [
        f"{r['keys']:,}",
        f"{r['puts_per_s']:,.0f}",
        ms(r["p50_ms"]),
        ms(r["p99_ms"]),
        per_node(r["rss_anon_mb"]),
        per_node(r["rss_file_mb"]),
        per_node(r["data_bytes"], 1e6, 1),
        "-" if tc is None else str(tc),
        r["leader"] or "-",
        str(sum(r["errors"].values())),
    ]


def headers(nodes: list[str]) -> list[str]:
    each = "/".join(nodes)
    return [f"{h} ({each})" if h.endswith("MB") else h for h in HEADERS]


def fill(
    c: LocalCluster,
    args: argparse.Namespace,
    n: int,
    step: int,
    term0: int,
    label: str,
    *extra: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` new markers from the load generator; a sampled row per ``step`` (printed as it comes)."""
    cmd = load_cmd(
        "fill",
        raftstate_endpoints(c),
        args,
        label,
        "--keys",
        str(n),
        "--step",
        str(step),
        "--concurrency",
        str(args.marker_concurrency),
        *(["--max-seconds", str(args.fill_minutes * 60)] if args.fill_minutes else []),
        *extra,
    )
    load = Load(cmd, c.root / f"load-{label}.log")
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        while True:
            doc = load.line()
            if doc.get("done"):
                load.proc.wait(timeout=60)
                return rows, doc
            row = {**doc, **sample(c, term0), "t_s": time.monotonic() - t0}
            rows.append(row)
            print("| " + " | ".join(fmt_row(row, c.ids)) + " |", flush=True)
    finally:
        load.kill()


def latency(samples: list[list[float]], t_from: float, t_to: float) -> dict[str, Any]:
    """p50/p99/max (ms) and count of the steady load's puts sent in [t_from, t_to)."""
    lat = [s[1] for s in samples if t_from <= s[0] < t_to]
    q = percentiles(lat)
    return {
        "puts": len(lat),
        "p50_ms": q["p50"],
        "p99_ms": q["p99"],
        "max_ms": max(lat) * 1000 if lat else None,
    }


def _lat_text(d: dict[str, Any]) -> str:
    if not d["puts"]:
        return "no puts answered"
    return f"p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.0f} ms ({d['puts']} puts)"


def steady_load(c: LocalCluster, args: argparse.Namespace, label: str, *extra: str) -> Load:
    addrs = [f"http://{c.addr[n]}" for n in c.ids]
    cmd = load_cmd("steady", addrs, args, label, "--rate", str(args.steady_rate), *extra)
    load = Load(cmd, c.root / f"load-{label}.log")
    ready = load.line()
    assert ready.get("ready"), ready
    return load


def operator(c: LocalCluster, timeout: float, *argv: str) -> tuple[int, str]:
    """One ``raftstate`` operator command, as an operator types it, against the live nodes."""
    eps = ",".join(c.addr[n] for n in c.ids if c.alive(n))
    cmd = [sys.executable, "-m", "raftstate.node", *argv, "--endpoints", eps, "--timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return done.returncode, (done.stdout + done.stderr).strip()


# --------------------------------------------------------------------------- after the fill


def wiped_follower(c: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    """kill -9 a follower, wipe it, replace it as docs/operations.md says, under steady writes."""
    load = steady_load(c, args, "wipe")
    try:
        t_before = time.monotonic()
        time.sleep(args.steady_s)
        leader = c.wait_leader()
        victim = next(n for n in c.ids if n != leader)
        term_kill = max_term(c)
        t_kill = time.monotonic()
        c.kill(victim)
        shutil.rmtree(data_dir(c, victim))
        rc, out = operator(c, 120, "member", "remove", "--id", victim)
        if rc != 0:
            raise RuntimeError(f"member remove --id {victim} failed: {out}")
        leader = c.wait_leader()
        commit = c.status(leader)["commit_index"]
        t_join = time.monotonic()
        c.join(victim, leader, data_dir(c, victim))
        eps = ",".join(c.addr[n] for n in c.ids if n != victim)
        add_cmd = [sys.executable, "-m", "raftstate.node", "member", "add", "--id", victim]
        add_cmd += ["--address", c.addr[victim], "--endpoints", eps, "--wait", str(args.catchup_timeout)]
        add_log = c.root / "member-add.log"
        with open(add_log, "wb") as add_out:
            add = subprocess.Popen(add_cmd, stdout=add_out, stderr=subprocess.STDOUT)
        t_caught = t_voter = None
        deadline = t_join + args.catchup_timeout + 60
        while t_caught is None or t_voter is None:
            now = time.monotonic()
            if now > deadline:
                add.kill()
                raise RuntimeError(f"{victim} did not catch up within {args.catchup_timeout:.0f} s")
            if t_voter is None and add.poll() is not None:
                if add.returncode != 0:
                    raise RuntimeError(f"member add --id {victim} failed: {add_log.read_text()[-2000:]}")
                t_voter = now
            if t_caught is None:
                try:
                    if caught_up(c, victim, commit):
                        t_caught = now
                except (OSError, HttpError, ValueError):
                    pass
            time.sleep(0.05)
        t_end = max(t_caught, t_voter)
        term_end = max_term(c)
    finally:
        res = load.finish()
    return {
        "node": victim,
        "catch_up_s": t_caught - t_join,
        "voter_s": t_voter - t_join,
        "down_s": t_join - t_kill,
        "commit_at_join": commit,
        "term_changes": term_end - term_kill,
        "before": latency(res["samples"], t_before, t_kill),
        "during": latency(res["samples"], t_join, t_end),
        "errors": res["errors"],
        "dropped": res.get("dropped"),
    }


def keys_everywhere(c: LocalCluster) -> dict[str, int | None]:
    return {nid: key_count(node_state(c, nid)) for nid in c.ids}


def expiry_storm(c: LocalCluster, args: argparse.Namespace, fill_rate: float, term0: int) -> dict[str, Any]:
    """``--expiry-storm`` markers all expiring at one instant, under steady writes to a fixed pool."""
    n = args.expiry_storm
    load = steady_load(c, args, "storm", "--pool", str(STEADY_POOL))
    try:
        wait_all_applied(c, 120)
        baseline = keys_everywhere(c)
        if any(v is None for v in baseline.values()):
            raise RuntimeError(f"a node's status does not report its key count (state.keys): {baseline}")
        t_before = time.monotonic()
        time.sleep(args.steady_s)
        t_before_end = time.monotonic()
        after = args.storm_expire_after or 1.5 * n / max(fill_rate, 1.0) + 30
        expires_at = time.time() + after
        print(
            f"\nexpiry storm: {n:,} markers expiring at +{after:.0f} s (steady {args.steady_rate:g} puts/s)"
        )
        print(markdown_table(headers(c.ids), []), flush=True)
        rows, done = fill(c, args, n, args.step, term0, "storm", "--expires-at", f"{expires_at:.3f}")
        late = time.time() - expires_at
        if late > 0:
            print(
                f"NOTE: the storm's fill ended {late:.0f} s after its markers expired "
                "(raise --storm-expire-after)"
            )
        else:
            time.sleep(-late)
        t_exp = time.monotonic() - max(0.0, late)
        term_exp = max_term(c)
        swept: dict[str, float] = {}
        last_print = time.monotonic()
        while len(swept) < len(c.ids):
            now = time.monotonic()
            counts = keys_everywhere(c)
            for nid, k in counts.items():
                if nid not in swept and k is not None and k <= (baseline[nid] or 0):
                    swept[nid] = now - t_exp
            if now - t_exp > args.storm_timeout:
                raise RuntimeError(
                    f"not swept after {args.storm_timeout:.0f} s: keys {counts}, before {baseline}"
                )
            if now - last_print > 30:
                print(f"  +{now - t_exp:.0f} s: keys {counts} (before the storm {baseline})", flush=True)
                last_print = now
            time.sleep(0.5)
        term_end = max_term(c)
    finally:
        res = load.finish()
    return {
        "markers": n,
        "acked": done["keys"],
        "fill_s": done["elapsed_s"],
        "expire_after_s": after,
        "fill_late_s": max(0.0, late),
        "swept_s": swept,
        "sweep_s": max(swept.values()),
        "term_changes": term_end - term_exp,
        "before": latency(res["samples"], t_before, t_before_end),
        "during": latency(res["samples"], t_exp, t_exp + max(swept.values())),
        "errors": res["errors"],
        "dropped": res.get("dropped"),
        "rows": rows,
    }


# --------------------------------------------------------------------------- the run


def run_markers(args: argparse.Namespace) -> int:
    n, step = args.markers, args.step
    report: dict[str, Any] = {"markers": n, "step": step, "concurrency": args.marker_concurrency}
    with tempfile.TemporaryDirectory(prefix="raftstate-markers-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start()
        wait_ready(c)
        report["load_avg_start"] = os.getloadavg()
        print(
            f"marker bench: {n:,} random markers of ~{args.value_bytes} B, ttl {args.ttl:g} s, through "
            f"AsyncClient at {args.marker_concurrency} concurrent; 3 nodes in {tmp} (fsync on)"
        )
        print("load average at start: " + " ".join(f"{x:.2f}" for x in report["load_avg_start"]), flush=True)
        term0 = max_term(c)
        print(markdown_table(headers(c.ids), []), flush=True)
        rows, done = fill(c, args, n, step, term0, "fill")
        report["rows"], report["fill"] = rows, done
        print(
            f"filled {done['keys']:,} markers in {done['elapsed_s']:.0f} s, errors {done['errors']}"
            + (f" (stopped by --fill-minutes {args.fill_minutes:g})" if done.get("stopped") else ""),
            flush=True,
        )
        wait_all_applied(c, 600)

        follower, secs = restart_to_ready(c, 600)
        report["restart_to_ready"] = {"node": follower, "seconds": secs}
        print(f"restart to ready (kill -9 of follower {follower}): {secs:.2f} s", flush=True)

        w = report["wiped"] = wiped_follower(c, args)
        print(
            f"wiped follower {w['node']} (kill -9, wipe, member remove, --join, member add) under "
            f"{args.steady_rate:g} puts/s: caught up {w['catch_up_s']:.1f} s after it started, voter after "
            f"{w['voter_s']:.1f} s; term changes {w['term_changes']}; "
            f"writes before: {_lat_text(w['before'])}; "
            f"during catch-up: {_lat_text(w['during'])}; errors {w['errors']}",
            flush=True,
        )
        if args.expiry_storm:
            rate = rows[-1]["puts_per_s"] if rows else 1000.0
            s = report["storm"] = expiry_storm(c, args, rate, term0)
            print(
                f"expiry storm: {s['acked']:,} markers swept from every node {s['sweep_s']:.0f} s after they "
                f"expired (per node {', '.join(f'{k} {v:.0f} s' for k, v in s['swept_s'].items())}); term "
                f"changes {s['term_changes']}; writes before: {_lat_text(s['before'])}; during the sweep: "
                f"{_lat_text(s['during'])}; errors {s['errors']}",
                flush=True,
            )
        report["load_avg_end"] = os.getloadavg()
    print("load average at end: " + " ".join(f"{x:.2f}" for x in report["load_avg_end"]))
    print()
    print(markdown_table(headers(c.ids), [fmt_row(r, c.ids) for r in rows]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"rows written to {args.json}")
    if args.plot:
        plot_markers(rows, c.ids, args.plot, f"{n:,} random markers, {args.marker_concurrency} concurrent")
    return 0
