"""A real 3-node cluster: node processes on 127.0.0.1, real sockets, real fsync, real kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raftstate.client import protocol
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = LocalCluster(tmp_path)
    c.start()
    yield c
    c.stop_all()


NO_FORWARD = {protocol.FORWARD_HEADER: "never"}


def _followers(c: LocalCluster, leader: str) -> list[str]:
    return [n for n in c.ids if n != leader]


def test_writes_and_reads_through_any_node(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = _followers(cluster, leader)[0]
    # (a follower may hear of the new leader a heartbeat after the leader knows it won)
    wait_until(lambda: cluster.status(follower)["leader"] == leader, 10, f"{follower} to know the leader")
    # Asked not to forward, a follower refuses the write and names the leader (id and address) so
    # the client can follow. (Forwarding, the default: tests/test_forwarding_cluster.py.)
    with pytest.raises(HttpError) as err:
        http("PUT", cluster.url(follower, "/v1/kv/a"), {"value": 1}, headers=NO_FORWARD)
    assert err.value.status == 421
    assert err.value.body["error"]["code"] == "not_leader"
    assert err.value.body["error"]["leader"] == leader
    assert err.value.body["error"]["leader_address"] == cluster.addr[leader]
    # ...and put() follows that redirect.
    v = cluster.put("a", {"processed": 1}, nid=follower)["version"]
    assert cluster.get("a") == {"key": "a", "value": {"processed": 1}, "version": v, "expires_at": None}
    # Stale reads from every node converge on the same value.
    for n in cluster.ids:
        wait_until(lambda n=n: cluster.get("a", nid=n, stale=True)["version"] == v, 5, f"{n} to apply")
    # A linearizable read on a follower is redirected too.
    with pytest.raises(HttpError) as err:
        http("GET", cluster.url(follower, "/v1/kv/a"), headers=NO_FORWARD)
    assert err.value.body["error"]["code"] == "not_leader"
    with pytest.raises(HttpError) as err:
        cluster.get("missing")
    assert err.value.status == 404 and err.value.body["error"]["code"] == "not_found"


def test_leader_kill_elects_new_leader_and_writes_resume(cluster: LocalCluster) -> None:
    for i in range(20):
        cluster.put(f"k{i}", i)
    old = cluster.wait_leader()
    cluster.kill(old)
    t0 = time.monotonic()
    new = cluster.wait_leader(among=_followers(cluster, old))
    cluster.put_retry("after", "kill")
    took = time.monotonic() - t0
    assert new != old
    assert took < 15, f"writes resumed only after {took:.1f}s"  # generous liveness bound
    for i in range(20):
        assert cluster.get(f"k{i}")["value"] == i


def test_restarted_follower_catches_up_by_log(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    f = _followers(cluster, leader)[0]
    cluster.kill(f)
    for i in range(50):
        cluster.put(f"k{i}", i)
    cluster.start(f)
    wait_until(lambda: cluster.get("k49", nid=f, stale=True)["value"] == 49, 15, f"{f} to catch up")
    assert cluster.status(f)["snapshot_index"] == 0


def test_restarted_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, settings={"snapshot_threshold": 40}) as c:
        c.start()
        leader = c.wait_leader()
        f = _followers(c, leader)[0]
        c.kill(f)
        for i in range(150):
            c.put(f"k{i}", i)
        # Compacted past what the follower has (a checkpoint keeps a tail of entries behind it: the
        # first one may compact nothing), so that the follower can only catch up by a snapshot.
        wait_until(lambda: c.status(leader)["compacted_index"] > 10, 20, "the leader to compact")
        c.start(f)
        wait_until(lambda: c.get("k149", nid=f, stale=True)["value"] == 149, 20, f"{f} to catch up")
        assert c.get("k0", nid=f, stale=True)["value"] == 0
        # The received store is installed (and readable) just before the snapshot is saved: wait.
        wait_until(lambda: c.status(f)["snapshot_index"] > 0, 10, f"{f}'s snapshot to be saved")
        assert "installed a snapshot" in c.log_text(f)


def test_kill_every_node_at_once_loses_nothing_acknowledged(cluster: LocalCluster) -> None:
    acked = {}
    for i in range(100):
        acked[f"k{i}"] = cluster.put(f"k{i}", i)["version"]
    for n in cluster.ids:
        cluster.kill(n)
    cluster.start()
    cluster.wait_leader()
    for k, version in acked.items():
        got = wait_until(lambda k=k: cluster.get(k), 10, f"read {k}")
        assert got["version"] == version


def test_terms_never_go_down_across_full_restart(cluster: LocalCluster) -> None:
    cluster.wait_leader()
    cluster.put("x", 1)
    # every node up (under load the third may still be starting when the first two elect)
    before = {n: wait_until(lambda n=n: cluster.status(n), 20, f"{n} up")["term"] for n in cluster.ids}
    for n in cluster.ids:
        cluster.kill(n)
    cluster.start()
    cluster.wait_leader()
    for n in cluster.ids:
        st = wait_until(lambda n=n: cluster.status(n), 10, f"{n} status")
        assert st["term"] >= before[n]


def test_second_process_on_same_data_dir_is_refused(cluster: LocalCluster) -> None:
    cluster.wait_leader()
    p = subprocess.run(
        [sys.executable, "-m", "raftstate.node", "node", "--config", str(cluster.config), "--id", "n1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0
    assert "data" in p.stderr and "lock" in p.stderr.lower(), p.stderr


def test_sigterm_on_leader_hands_over_and_exits_zero(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    cluster.put("x", 1)
    cluster.kill(leader, signal.SIGTERM)
    assert cluster.procs[leader].returncode == 0
    assert "handed leadership" in cluster.log_text(leader)
    new = cluster.wait_leader(timeout=5, among=_followers(cluster, leader))
    assert new != leader
    assert cluster.get("x")["value"] == 1


def test_bad_config_stops_startup_with_one_precise_message(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("nodes:\n  - {id: n1, address: '127.0.0.1:99999', data_dir: ./d}\n")
    p = subprocess.run(
        [sys.executable, "-m", "raftstate.node", "node", "--config", str(cfg), "--id", "n1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2
    assert "nodes[0].address" in p.stderr
    assert not (tmp_path / "d").exists(), "a bad config must not touch any data dir"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftstate.node",
            "node",
            "--config",
            str(tmp_path / "none.yaml"),
            "--id",
            "n1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and "none.yaml" in p.stderr


def test_torn_tail_is_truncated_and_corruption_refuses_start(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    f = _followers(cluster, leader)[0]
    for i in range(30):
        cluster.put(f"k{i}", i)
    wait_until(lambda: cluster.get("k29", nid=f, stale=True), 10, "follower to apply")
    cluster.kill(f)
    seg = sorted((cluster.root / "data" / f / "log").glob("*.seg"))[-1]
    # A crash mid-write leaves a partial record after the last complete one (it was never fsynced,
    # so never acknowledged): the node cuts it off with a warning and serves on.
    with open(seg, "ab") as fh:
        fh.write((100).to_bytes(4, "big") + b"\x00\x01\x02\x03" + b"partial")
    cluster.start(f)
    cluster.put("after-torn", 1)
    wait_until(lambda: cluster.get("after-torn", nid=f, stale=True)["value"] == 1, 15, "follower to recover")
    assert cluster.get("k29", nid=f, stale=True)["value"] == 29
    text = cluster.log_text(f)
    assert "torn" in text.lower() and seg.name in text
    # A flipped byte in the middle is corruption: refuse to start, never serve different data.
    cluster.kill(f)
    with open(seg, "r+b") as fh:
        fh.seek(40)
        b = fh.read(1)
        fh.seek(40)
        fh.write(bytes([b[0] ^ 0xFF]))
    cluster.start(f)
    cluster.procs[f].wait(timeout=30)
    assert cluster.procs[f].returncode != 0
    text = cluster.log_text(f)
    assert seg.name in text and "corrupt" in text.lower()


def _terms(c: LocalCluster) -> dict[str, int]:
    return {n: c.status(n)["term"] for n in c.ids}


def test_load_alone_never_triggers_an_election(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    # A follower may not have heard from the new leader yet (still at term 0): that is no election.
    wait_until(lambda: len(set(_terms(cluster).values())) == 1, 20, "every node in the leader's term")
    before = _terms(cluster)
    deadline = time.monotonic() + 4.0

    def worker(w: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            http("PUT", cluster.url(leader, f"/v1/kv/load{w}-{n % 50}"), {"value": "x" * 100})
            n += 1
        return n

    with ThreadPoolExecutor(16) as pool:
        done = sum(pool.map(worker, range(16)))
    assert done > 100
    assert _terms(cluster) == before, "a term changed under load alone"
    assert cluster.leader() == leader


def test_slow_disk_delays_commits_but_not_heartbeats(tmp_path: Path) -> None:
    """Every log fsync takes an extra 700 ms — longer than the 500 ms election timeout — on every
    node: writes slow down, yet heartbeats and their replies keep flowing, so no follower starts an
    election and the leader keeps its quorum (CheckQuorum)."""
    with LocalCluster(tmp_path, settings={"test_hooks": True}) as c:
        c.start(env={"RAFTSTATE_FAULT_SLOW_FSYNC_MS": "700"})
        leader = c.wait_leader()
        c.put("warm", 0)
        before = _terms(c)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: c.put(f"slow{i}", i, nid=leader, timeout=15), range(8)))
        assert time.monotonic() - t0 > 0.8  # the delay is real
        assert _terms(c) == before, "a slow disk must not cause elections"
        assert "fsync is delayed" in c.log_text(leader)
