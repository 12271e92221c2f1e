"""Watch on a real 3-node cluster (node/ops/local_cluster.py: real processes, sockets, kill -9):
a watch on a follower and on the leader see the same write with the same revision; after kill -9 of
the node being watched, watching another node from the last revision + 1 gives every change with
no gap and no duplicate; a restarted node still serves the history from before its restart."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftstate.node.ops.local_cluster import HttpError, LocalCluster, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("watch")
    with LocalCluster(root) as c:
        c.start()
        c.wait_leader(30)
        c.put_retry("warm", 0)
        yield c


def watch(c: LocalCluster, nid: str, prefix: str, frm: int | None = None, timeout: float = 2.0) -> Any:
    q: dict[str, str] = {"prefix": prefix, "timeout": str(timeout)}
    if frm is not None:
        q["from"] = str(frm)
    return c.request("GET", nid, "/v1/watch?" + urllib.parse.urlencode(q), timeout=timeout + 5)


def start_revision(c: LocalCluster, prefix: str) -> int:
    leader = c.wait_leader()
    rev: int = watch(c, leader, prefix)["revision"]
    return rev


def followers(c: LocalCluster) -> list[str]:
    leader = c.wait_leader()
    return [n for n in c.ids if n != leader and c.alive(n)]


def test_a_watch_on_a_follower_and_on_the_leader_both_see_a_write(cluster: LocalCluster) -> None:
    c = cluster
    leader = c.wait_leader()
    follower = followers(c)[0]
    frm = start_revision(c, "both:") + 1
    answers: dict[str, Any] = {}

    def poll(nid: str) -> None:
        answers[nid] = watch(c, nid, "both:", frm, timeout=10)

    threads = [threading.Thread(target=poll, args=(n,)) for n in (leader, follower)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both parked
    version = c.put("both:k", {"v": 1})["version"]
    for t in threads:
        t.join(15)
    for nid in (leader, follower):
        events = answers[nid]["events"]
        assert [(e["type"], e["key"], e["revision"], e["value"]) for e in events] == [
            ("put", "both:k", version, {"v": 1})
        ], nid


def collect(c: LocalCluster, nid: str, prefix: str, frm: int, until: int) -> tuple[list[int], int]:
    """Revisions of the events under ``prefix`` from ``frm``, polling ``nid`` until ``until`` is
    covered; returns them and the revision the stream is complete up to."""
    revs: list[int] = []
    while frm <= until:
        body = watch(c, nid, prefix, frm, timeout=2)
        revs += [e["revision"] for e in body["events"]]
        frm = body["revision"] + 1
    return revs, frm - 1


def test_after_kill_9_of_the_watched_node_another_node_resumes_without_gap_or_duplicate(
    cluster: LocalCluster,
) -> None:
    c = cluster
    watched = followers(c)[0]
    frm = start_revision(c, "resume:") + 1
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                acked.append(c.put(f"resume:{i}", i, timeout=2)["version"])
                i += 1
            except (OSError, HttpError):
                time.sleep(0.05)

    w = threading.Thread(target=writer)
    w.start()
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(seen) < 30 and time.monotonic() < deadline:  # watch the follower for a while
            body = watch(c, watched, "resume:", frm, timeout=1)
            seen += [e["revision"] for e in body["events"]]
            frm = body["revision"] + 1
        assert len(seen) >= 30, f"saw {len(seen)} events on {watched}"
        c.kill(watched)  # kill -9 of the node being watched
        other = next(n for n in c.ids if n != watched and c.alive(n))
        time.sleep(0.5)
    finally:
        stop.set()
        w.join(30)
    last = max(acked)
    more, _ = collect(c, other, "resume:", frm, until=last)
    seen += more
    assert seen == sorted(set(seen)), "a duplicate or a reordering across the move"
    assert set(acked) <= set(seen), f"acknowledged writes missing: {sorted(set(acked) - set(seen))[:10]}"
    # And the whole stream equals what the surviving node holds for that range: no gap.
    full, _ = collect(c, other, "resume:", seen[0], until=last)
    assert seen == [r for r in full if r <= seen[-1]]
    c.start(watched)  # back for the next test
    wait_until(lambda: c.alive(watched) and c.status(watched)["applied_index"] >= last, 30, "rejoined")


def test_a_restarted_node_still_serves_history_from_before_its_restart(cluster: LocalCluster) -> None:
    c = cluster
    frm = start_revision(c, "restart:") + 1
    versions = [c.put_retry(f"restart:{i}", i)["version"] for i in range(5)]
    node = followers(c)[0]
    wait_until(lambda: c.status(node)["applied_index"] >= versions[-1], 20, "applied on the follower")
    c.kill(node)
    c.start(node)
    wait_until(lambda: c.alive(node) and _serves(c, node), 30, f"{node} serving again")
    revs, _ = collect(c, node, "restart:", frm, until=versions[-1])
    assert revs == versions


def _serves(c: LocalCluster, nid: str) -> bool:
    try:
        c.status(nid)
        return True
    except (OSError, HttpError, ValueError):
        return False


def test_a_node_prunes_its_history_to_the_settings_and_answers_compacted(tmp_path: Path) -> None:
    settings = {"watch_max_events": 10, "watch_history_events": 20}
    with LocalCluster(tmp_path, n=1, settings=settings) as c:
        c.start()
        c.wait_leader(30)
        versions = [c.put_retry(f"prune:{i}", i)["version"] for i in range(60)]

        def compacted() -> dict[str, Any] | None:
            try:
                watch(c, "n1", "prune:", 1, timeout=0)
            except HttpError as exc:
                if exc.code == "compacted" and exc.body["error"]["oldest"] >= versions[-1] - 19:
                    err: dict[str, Any] = exc.body["error"]
                    return err
                if exc.code != "compacted":
                    raise
            return None

        err = wait_until(compacted, 20, "the history pruned to at most 20 events")
        oldest = err["oldest"]
        assert versions[-1] - 19 <= oldest <= versions[-1]
        revs, _ = collect(c, "n1", "prune:", oldest, until=versions[-1])
        assert revs == [v for v in versions if v >= oldest]  # everything from oldest on, in order
