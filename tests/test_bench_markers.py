"""``scripts/bench.py --markers`` at a tiny size against real 3-node clusters: every row has every
field with plausible values, the after-fill measurements are there, and it is the client library
that wrote the markers (they are listed afterwards through ``raftstate.client``, with their ttl).
Speed is not asserted (the machine is shared)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raftstate.client import Client
from raftstate.node.bench.clusters import wait_ready
from raftstate.node.bench.markers import expiry_storm, fill, keys_everywhere
from raftstate.node.bench.scale import max_term
from raftstate.node.ops.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^webhooks:(stripe|github|shopify|twilio|slack):evt_[0-9a-f]{16}$")
NODES = ["n1", "n2", "n3"]

pytestmark = pytest.mark.cluster


def check_rows(rows: list[dict[str, Any]], n: int, step: int) -> None:
    assert [r["keys"] for r in rows] == list(range(step, n + 1, step)), rows
    for r in rows:
        assert r["puts_per_s"] > 0 and r["step_keys"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert sorted(r["rss_anon_mb"]) == NODES and all(v > 0 for v in r["rss_anon_mb"].values())
        assert sorted(r["rss_file_mb"]) == NODES and all(v > 0 for v in r["rss_file_mb"].values())
        assert sorted(r["data_bytes"]) == NODES and all(v > 0 for v in r["data_bytes"].values())
        assert isinstance(r["term_changes"], int) and r["term_changes"] >= 0
        assert r["leader"] in NODES and r["errors"] == {}


def test_markers_mode_end_to_end(tmp_path: Path) -> None:
    out_json = tmp_path / "markers.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--markers",
            "3000",
            "--step",
            "1000",
            "--concurrency",
            "8",
            "--steady-s",
            "2",
            "--out",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out_json.read_text())
    check_rows(report["rows"], 3000, 1000)
    assert report["fill"]["keys"] == 3000 and report["concurrency"] == 8
    assert len(report["load_avg_start"]) == 3 and len(report["load_avg_end"]) == 3
    assert report["restart_to_ready"]["node"] in NODES and report["restart_to_ready"]["seconds"] > 0
    wiped = report["wiped"]
    assert wiped["node"] in NODES and 0 < wiped["catch_up_s"] and 0 < wiped["voter_s"]
    assert isinstance(wiped["term_changes"], int)
    assert wiped["before"]["puts"] > 0 and wiped["during"]["puts"] > 0
    assert wiped["before"]["p99_ms"] > 0 and wiped["during"]["p99_ms"] > 0
    # the markdown table: a header naming every node and one row per step
    lines = done.stdout.splitlines()
    head = next(line for line in lines if line.startswith("| keys |"))
    assert "RssAnon MB (n1/n2/n3)" in head and "term changes" in head
    assert sum(1 for line in lines if line.startswith("| 3,000 |")) == 2  # live, and the final table
    assert "restart to ready" in done.stdout and "wiped follower" in done.stdout


def test_the_client_library_writes_the_markers_and_a_storm_is_swept(tmp_path: Path) -> None:
    args = argparse.Namespace(
        value_bytes=60,
        ttl=7 * 86400.0,
        marker_concurrency=8,
        steady_rate=100.0,
        steady_s=1.0,
        step=500,
        expiry_storm=500,
        storm_expire_after=12.0,
        storm_timeout=60.0,
        fill_minutes=None,
    )
    with LocalCluster(tmp_path) as c:
        c.start()
        wait_ready(c)
        term0 = max_term(c)
        t0 = time.time()
        rows, done = fill(c, args, 1000, 500, term0, "t")
        check_rows(rows, 1000, 500)
        assert done["keys"] == 1000
        with Client([f"http://{c.addr[n]}" for n in c.ids]) as client:
            keys = list(client.keys(prefix="webhooks:"))
            assert len(keys) == 1000 and all(MARKER.match(k) for k in keys), keys[:5]
            entry = client.get_entry(keys[0])
            assert entry is not None and entry.expires_at is not None
            assert abs(entry.expires_at.timestamp() - (t0 + 7 * 86400)) < 120
            assert 50 <= len(entry.value) <= 60
        storm = expiry_storm(c, args, rows[-1]["puts_per_s"], term0)
        assert storm["acked"] == 500 and sorted(storm["swept_s"]) == NODES
        assert isinstance(storm["term_changes"], int) and storm["fill_late_s"] == 0
        assert storm["before"]["puts"] > 0 and "p99_ms" in storm["during"]
        # swept: every node holds what it held before the storm (the 1000 markers, the steady pool,
        # the warm-up key)
        counts = keys_everywhere(c)
        assert all(k is not None and 1000 < k <= 1000 + 1001 for k in counts.values()), counts
