"""Sessions end on real processes (issue 19, item 2): each ``raftstate incr`` opens a session for its
write and closes it on exit, so three CLI calls leave no session behind (before, each lived for
session_idle_timeout_s and counted against max_sessions)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from raftstate.node.ops.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("session-close"))
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


def sessions(c: LocalCluster) -> int:
    n: int = c.status(c.wait_leader())["state"]["sessions"]
    return n


def test_three_cli_increments_leave_no_session(cluster: LocalCluster) -> None:
    c = cluster
    eps = ",".join(f"http://{c.addr[n]}" for n in c.ids)
    cli = [sys.executable, "-m", "raftstate.client.cli"]
    assert sessions(c) == 0
    for i in range(1, 4):
        out = subprocess.run(
            [*cli, "incr", "cron:runs", "--endpoints", eps], capture_output=True, text=True, timeout=60
        )
        assert (out.returncode, out.stdout) == (0, f"{i}\n"), out.stderr
    assert sessions(c) == 0
    # ...and on every replica (a follower applies the close when the next heartbeat commits it).
    for nid in c.ids:
        wait_until(lambda nid=nid: c.status(nid)["state"]["sessions"] == 0, 10, f"{nid} to apply the closes")
