"""Issue 19, item 7: a second ``raftstate cluster up`` of a running cluster says which cluster is
running and exits at once — it neither starts nodes that die with "data dir in use" nor prints the
other cluster's leader as if it were its own. Real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raftstate.node.ops.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster


def cluster_up(config: Path) -> list[str]:
    return [sys.executable, "-m", "raftstate.node", "cluster", "up", "--config", str(config)]


def test_a_second_cluster_up_names_the_running_cluster_and_exits(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)  # only its cluster file: `cluster up` starts the nodes
    first = subprocess.Popen(
        cluster_up(c.config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: _any_leader(c), 30, "a leader")
        second = subprocess.run(cluster_up(c.config), capture_output=True, text=True, timeout=30)
        assert second.returncode == 1, second
        assert "already running" in second.stderr and "cluster 'test'" in second.stderr, second.stderr
        assert "data dir" in second.stderr and "in use" in second.stderr
        assert "leader:" not in second.stdout and "started" not in second.stdout, second.stdout
        assert first.poll() is None  # the running cluster is untouched
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()


def _any_leader(c: LocalCluster) -> str | None:
    for nid in c.ids:
        try:
            st = c.status(nid, timeout=0.5)
        except Exception:
            continue
        if st.get("role") == "leader":
            return nid
    return None
