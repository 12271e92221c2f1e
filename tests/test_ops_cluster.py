"""Day-2 operations on real node processes: grow and shrink under load, remove the leader, replace a
wiped node, refusals, back up / wipe everything / restore. Commands run as operators type them
(``raftstate member ...``, ``raftstate node --join ...``)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from raftstate.client import Client
from raftstate.node.cli import main as raftstate
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, free_ports, http, wait_until
from raftstate.node.ops.workload import Workload

pytestmark = pytest.mark.cluster


def ops(c: LocalCluster, *argv: str, endpoints: list[str] | None = None) -> int:
    eps = ",".join(endpoints or [c.addr[n] for n in c.ids if c.alive(n)])
    return raftstate([*argv, "--endpoints", eps])


def start_joiner(c: LocalCluster, nid: str, member: str, port: int | None = None, data: str = "") -> None:
    """``raftstate node --join`` as a LocalCluster member (kill/stop_all/log_text work on it)."""
    if nid not in c.addr:
        c.addr[nid] = f"127.0.0.1:{port or free_ports(1)[0]}"
    c.join(nid, member, c.root / "data" / (data or f"{nid}-joined"))


def members(c: LocalCluster, nid: str) -> dict[str, Any]:
    doc: dict[str, Any] = http("GET", c.url(nid, "/v1/members"))
    return doc


def _contact_ago(c: LocalCluster, leader: str, nid: str) -> int:
    row = next(r for r in members(c, leader)["members"] if r["id"] == nid)
    ago = row["last_contact_ms_ago"]
    return 1 << 30 if ago is None else int(ago)  # None: not heard from since this leader started


def roles(c: LocalCluster, nid: str) -> dict[str, str]:
    return {r["id"]: r["role"] for r in members(c, nid)["members"]}


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = LocalCluster(tmp_path, settings={"snapshot_threshold": 200})
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


def test_grow_3_to_5_and_back_under_load_removing_the_leader(cluster: LocalCluster, capsys: Any) -> None:
    c = cluster
    work = Workload(list(c.addr.values()), "ops:counter")
    with work.running():
        # past two snapshots (threshold 200): the leader has compacted its log, joiners need a snapshot
        wait_until(lambda: work.acked > 450, 60, "the workload to run")
        # Order 1: start the node with --join, then add it (it waits as a non-member meanwhile).
        start_joiner(c, "n4", member="n1")
        wait_until(lambda: "waits to be added" in c.log_text("n4"), 30, "n4 to ask to be added")
        assert ops(c, "member", "add", "--id", "n4", "--address", c.addr["n4"], "--wait", "60") == 0
        # Order 2: add first (the command waits for the node), then start it.
        n5_port = free_ports(1)[0]
        c.addr["n5"] = f"127.0.0.1:{n5_port}"
        adding = threading.Thread(
            target=lambda: ops(c, "member", "add", "--id", "n5", "--address", c.addr["n5"], "--wait", "60"),
        )
        adding.start()
        wait_until(lambda: "n5" in roles(c, "n1"), 30, "n5 to be a learner")
        start_joiner(c, "n5", member="n2", port=n5_port)
        adding.join(timeout=90)
        leader = c.wait_leader()
        wait_until(lambda: roles(c, leader) == dict.fromkeys(c.ids, "voter"), 30, "5 voters")
        # The leader had compacted its log (snapshot_threshold 200): n4 caught up by snapshot.
        assert "installed a snapshot" in c.log_text("n4")
        capsys.readouterr()
        assert raftstate(["status", "--config", str(c.config)]) == 0
        assert f"not in cluster.yaml: n4 at {c.addr['n4']}, n5 at {c.addr['n5']}" in capsys.readouterr().out
        capsys.readouterr()
        assert ops(c, "member", "list") == 0
        listing = capsys.readouterr().out
        assert all(f"{n}  " in listing or f"{n} *" in listing for n in c.ids) and "LAG" in listing
        # A joined node restarts with the same command (its data dir's record, nobody asked).
        c.kill("n4", signal.SIGTERM)
        start_joiner(c, "n4", member="n1")
        wait_until(
            lambda: c.status("n4")["applied_index"] >= c.status(leader)["commit_index"] - 5,
            30,
            "n4 to catch up after a restart",
        )
        # A yaml node restarted now must dial n4/n5, known only from the log/snapshot.
        follower = next(n for n in ["n1", "n2", "n3"] if n != leader)
        c.kill(follower, signal.SIGTERM)
        c.start(follower)
        wait_until(
            lambda: c.status(follower)["applied_index"] >= c.status(leader)["commit_index"] - 5,
            30,
            f"{follower} to catch up after a restart",
        )
        # Shrink back to 3: the leader first (it hands over), then one more original node.
        assert ops(c, "member", "remove", "--id", leader) == 0
        new_leader = c.wait_leader(among=[n for n in c.ids if n != leader])
        assert new_leader != leader
        other = next(n for n in ["n1", "n2", "n3"] if n not in (leader, new_leader))
        assert ops(c, "member", "remove", "--id", other) == 0
        left = [n for n in c.ids if n not in (leader, other)]
        assert sorted(roles(c, new_leader)) == sorted(left)
        time.sleep(1.0)  # writes keep going on the 3 that are left
    c.kill(leader)
    c.kill(other)
    assert work.failed == [], work.failed[:3]
    final = work.client.get("ops:counter")
    assert final == work.acked and work.acked > 100
    work.client.close()


def test_replace_a_wiped_node_and_refusals(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, settings={"election_timeout_ms": 1000}) as c:
        c.start()
        leader = c.wait_leader()
        for i in range(20):
            c.put(f"k{i}", i)
        victim = next(n for n in c.ids if n != leader)
        # Refused: an id that exists; an address another member has; a malformed one.
        with pytest.raises(HttpError) as err:
            http("POST", c.url(leader, "/v1/members"), {"id": victim, "address": "127.0.0.1:1"})
        assert err.value.status == 409 and err.value.code == "member_exists"
        with pytest.raises(HttpError) as err:
            http("POST", c.url(leader, "/v1/members"), {"id": "n9", "address": c.addr[victim]})
        assert err.value.code == "member_exists" and victim in err.value.body["error"]["message"]
        with pytest.raises(HttpError) as err:
            http("POST", c.url(leader, "/v1/members"), {"id": "n9", "address": "nohost"})
        assert err.value.status == 400 and err.value.body["error"]["field"] == "address"

        # The victim's disk is wiped: restarting it as before is refused, and says what to run.
        heard = c.root / "data" / leader / "heard_from.json"
        wait_until(lambda: victim in json.loads(heard.read_text()), 30, f"{leader} to record {victim}")
        c.kill(victim)
        shutil.rmtree(c.root / "data" / victim)
        # Every node forgets in memory what it heard (the leader restarts): the record on disk stays.
        c.kill(leader, signal.SIGTERM)
        c.start(leader)
        wait_until(lambda: c.status(leader), 30, f"{leader} to serve again")
        leader = c.wait_leader()
        out = subprocess.run(
            [sys.executable, "-m", "raftstate.node", "node", "--config", str(c.config), "--id", victim],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert "wiped disk" in out.stderr and f"member remove --id {victim}" in out.stderr
        # ...and so is --join while the cluster still lists it as a voter.
        start_joiner(c, victim, member=leader, data=f"{victim}-new")
        assert c.procs[victim].wait(timeout=60) == 2
        assert "already a voter" in c.log_text(victim)

        # Refused: removing a live voter while another is down leaves no reachable quorum.
        third = next(n for n in c.ids if n not in (leader, victim))
        wait_until(lambda: _contact_ago(c, leader, victim) > 1000, 30, f"{leader} to miss {victim}")
        with pytest.raises(HttpError) as err:
            http("DELETE", c.url(leader, f"/v1/members/{third}"))
        assert err.value.status == 409 and err.value.code == "quorum_unreachable"
        assert c.alive(third) and roles(c, leader)[third] == "voter"

        # The procedure: remove the dead voter, start a new incarnation with --join, add it.
        assert ops(c, "member", "remove", "--id", victim) == 0
        start_joiner(c, victim, member=leader, data=f"{victim}-new")
        assert ops(c, "member", "add", "--id", victim, "--address", c.addr[victim], "--wait", "60") == 0
        wait_until(lambda: c.get("k19", nid=victim, stale=True)["value"] == 19, 30, "the new incarnation")

        # Leadership moves on request, to the voter asked for.
        target = next(n for n in c.ids if n != leader)
        assert ops(c, "leader", "transfer", "--to", target) == 0
        assert c.wait_leader() == target

        # Refused: a second change while one is not committed. Pause both followers so the first
        # cannot commit, and ask for two changes at once.
        leader = c.wait_leader()
        followers = [n for n in c.ids if n != leader]
        for f in followers:
            c.kill(f, signal.SIGSTOP)
        try:
            with pytest.raises(HttpError) as err:
                http("POST", c.url(leader, "/v1/members?timeout=0.2"), {"id": "n8", "address": "127.0.0.1:2"})
            assert err.value.code == "outcome_unknown"
            with pytest.raises(HttpError) as err:
                http("POST", c.url(leader, "/v1/members"), {"id": "n9", "address": "127.0.0.1:3"})
            assert err.value.status == 409 and err.value.code == "change_in_progress"
        finally:
            for f in followers:
                c.kill(f, signal.SIGCONT)


def test_backup_wipe_every_node_restore(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    client = Client([f"http://{c.addr[n]}" for n in c.ids], timeout=30)
    for i in range(300):  # beyond snapshot_threshold: the nodes compacted too
        client.set(f"job:{i}", {"n": i})
    assert client.increment("rows", by=41) == 41
    lock = client.acquire_lock("reindex", ttl=600, owner="worker-7")
    expiring = client.set("short", 1, ttl=0.5)
    assert expiring
    backup = tmp_path / "backup.rsb"
    assert ops(c, "snapshot", "save", str(backup)) == 0
    time_at_backup = c.status(c.wait_leader())["cluster_time_ms"]
    client.set("after-backup", 1)  # not in the backup
    client.close()

    # A damaged file is refused, precisely.
    data = backup.read_bytes()
    bad = tmp_path / "bad.rsb"
    bad.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    assert raftstate(["snapshot", "inspect", str(bad)]) == 1
    bad.write_bytes(data[:-10])
    assert raftstate(["snapshot", "inspect", str(bad)]) == 1
    assert raftstate(["snapshot", "inspect", str(backup)]) == 0

    # Lose every disk; restore into a new cluster (new id, same machines).
    c.stop_all()
    shutil.rmtree(c.root / "data")
    doc = yaml.safe_load(c.config.read_text())
    new = c.root / "restored.yaml"
    assert raftstate(["snapshot", "restore", str(backup), "--config", str(c.config)]) == 1  # same id
    doc["cluster_id"] = "restored"
    new.write_text(yaml.safe_dump(doc))
    assert raftstate(["snapshot", "restore", str(backup), "--config", str(new)]) == 0
    assert raftstate(["snapshot", "restore", str(backup), "--config", str(new)]) == 1  # not empty now
    c.config = new
    c.start()
    leader = c.wait_leader()
    client = Client([f"http://{c.addr[n]}" for n in c.ids], timeout=30)
    try:
        assert all(client.get(f"job:{i}") == {"n": i} for i in range(300))
        assert client.get("after-backup") is None
        assert client.get("short") is None  # its ttl ran out in cluster time
        assert client.increment("rows") == 42
        info = client.lock_info("reindex")
        assert info is not None and info.owner == "worker-7" and info.token == lock.token
        assert c.status(leader)["cluster_time_ms"] >= time_at_backup
        new_lock = client.acquire_lock("other", ttl=5)
        assert new_lock.token > lock.token  # fencing tokens keep growing
    finally:
        client.close()
