"""Keys, TTLs, counters, fenced locks and exactly-once writes through the HTTP API of a real
3-node cluster (node/ops/local_cluster.py): real processes, sockets, fsync, kill -9, SIGSTOP, skewed clocks.

One cluster serves the whole module (each test uses its own keys); every node's wall clock is
offset by the file named in RAFTSTATE_CLOCK_OFFSET_FILE (node/runtime/clock.py), which tests rewrite to skew
a follower by minutes or step the leader's clock back. Small limits make the size errors cheap,
a low snapshot threshold makes snapshot installs happen, a short session idle timeout makes
session expiry testable.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from raftstate.client import protocol as p
from raftstate.node.ops.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

SETTINGS = {
    "snapshot_threshold": 100,
    "session_idle_timeout_s": 4,
    "max_session_results": 8,
    "max_key_bytes": 64,
    "max_value_bytes": 2048,
    "max_request_bytes": 8192,
    "test_hooks": True,  # every node reads its clock offset from a file (node/test_hooks.py)
}
ELECTION_S = 0.5  # the default election_timeout_ms


class Reply:
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    @property
    def code(self) -> str | None:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err.get("code") if isinstance(err, dict) else None

    @property
    def error(self) -> dict[str, Any]:
        err: dict[str, Any] = self.body["error"]
        return err

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


class Cluster(LocalCluster):
    """LocalCluster plus per-node clock offset files and a raw HTTP helper."""

    def offset_file(self, nid: str) -> Path:
        return self.root / f"clock-offset-{nid}"

    def set_offset(self, nid: str, offset_ms: int) -> None:
        tmp = self.offset_file(nid).with_suffix(".tmp")
        tmp.write_text(str(offset_ms))
        tmp.replace(self.offset_file(nid))  # atomic: the node never reads a half-written file

    def start_node(self, nid: str) -> None:
        if not self.offset_file(nid).exists():
            self.set_offset(nid, 0)
        self.start(nid, env={"RAFTSTATE_CLOCK_OFFSET_FILE": str(self.offset_file(nid))})

    def call(
        self,
        nid: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type, "Accept": accept, **(headers or {})}
        req = urllib.request.Request(self.url(nid, path), data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, _decode(resp.read(), resp.headers.get("Content-Type", "")))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, _decode(exc.read(), exc.headers.get("Content-Type", "")))

    def lead(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        """Call the leader (following not_leader redirects while leadership settles)."""
        deadline = time.monotonic() + 20
        while True:
            nid = self.wait_leader()
            try:
                r = self.call(nid, method, path, body, **kw)
            except OSError:
                r = Reply(0, None)
            if (r.code != "not_leader" and r.status != 0) or time.monotonic() > deadline:
                return r
            time.sleep(0.05)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.lead(method, path, body, **kw)
        assert r.status == 200, r
        return r.body

    def followers(self) -> list[str]:
        leader = self.wait_leader()
        return [n for n in self.ids if n != leader]


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "msgpack" in content_type:
        return msgpack.unpackb(raw, raw=False)
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace")}


@pytest.fixture(scope="module")
def jc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("jobstate"), settings=SETTINGS)
    for nid in c.ids:
        c.start_node(nid)
    c.wait_leader()
    yield c
    c.stop_all()


@pytest.fixture
def c(jc: Cluster) -> Cluster:
    """Every node running with a correct clock (whatever an earlier test did) and a leader."""
    for nid in jc.ids:
        jc.set_offset(nid, 0)
        if nid in jc.procs and jc.procs[nid].poll() is None:
            jc.procs[nid].send_signal(signal.SIGCONT)
        if not jc.alive(nid):
            jc.start_node(nid)
    jc.wait_leader()
    for nid in jc.ids:
        wait_until(lambda nid=nid: jc.call(nid, "GET", "/ready").status == 200, 20, f"{nid} ready")
    return jc


def stale_get(c: Cluster, nid: str, key: str) -> Reply:
    return c.call(nid, "GET", f"/v1/kv/{key}?consistency=stale")


def same_state_everywhere(c: Cluster) -> str:
    """Wait until every node has applied the same index, then require byte-identical state there."""

    def digests() -> dict[str, Any] | None:
        d = {n: c.call(n, "GET", "/status?digest=1").body["state_digest"] for n in c.ids}
        return d if len({v["applied_index"] for v in d.values()}) == 1 else None

    d = wait_until(digests, 20, "every node to apply the same index", interval=0.02)
    shas = {n: v["sha256"] for n, v in d.items()}
    assert len(set(shas.values())) == 1, f"replicas differ at index {d['n1']['applied_index']}: {shas}"
    return str(next(iter(shas.values())))


# =========================================================================== keys


def test_keys_set_get_cas_delete_increment_and_list(c: Cluster) -> None:
    v1 = c.ok("PUT", "/v1/kv/job:1", {"value": {"processed": 1, "ids": [1, 2]}})
    assert v1["created"] is True and v1["expires_at"] is None
    got = c.ok("GET", "/v1/kv/job:1")
    assert got == {
        "key": "job:1",
        "value": {"processed": 1, "ids": [1, 2]},
        "version": v1["version"],
        "expires_at": None,
    }
    # if_absent on a live key: 200 with the existing version, nothing written
    again = c.ok("PUT", "/v1/kv/job:1", {"value": "other", "if_absent": True})
    assert again == {"version": v1["version"], "created": False, "expires_at": None}
    # compare-and-set
    r = c.lead("PUT", "/v1/kv/job:1", {"value": 2, "if_version": v1["version"] + 1000})
    assert (r.status, r.code, r.error["version"], r.error["key"]) == (
        409,
        "version_mismatch",
        v1["version"],
        "job:1",
    )
    v2 = c.ok("PUT", "/v1/kv/job:1", {"value": 2, "if_version": v1["version"]})["version"]
    assert v2 > v1["version"]
    # increment: from 0, by any int; wrong type and overflow are clear errors
    assert c.ok("POST", "/v1/kv/ctr:a/increment", {})["value"] == 1
    assert c.ok("POST", "/v1/kv/ctr:a/increment", {"by": -5})["value"] == -4
    r = c.lead("POST", "/v1/kv/job:1/increment", {"by": 1})
    assert r.status == 200 and r.body["value"] == 3  # 2 is an integer
    c.ok("PUT", "/v1/kv/text", {"value": "abc"})
    r = c.lead("POST", "/v1/kv/text/increment", {})
    assert (r.status, r.code) == (409, "wrong_type") and "'text'" in r.error["message"]
    c.ok("PUT", "/v1/kv/big", {"value": 2**63 - 1})
    r = c.lead("POST", "/v1/kv/big/increment", {})
    assert (r.status, r.code) == (409, "overflow") and "64-bit" in r.error["message"]
    assert c.ok("GET", "/v1/kv/big")["value"] == 2**63 - 1
    # a key with a slash travels as %2F
    assert c.ok("POST", "/v1/kv/a%2Fb/increment", {})["value"] == 1
    assert c.ok("GET", "/v1/kv/a%2Fb")["key"] == "a/b"
    # delete says whether the key existed; if_version guards it
    r = c.lead("DELETE", "/v1/kv/job:1", {"if_version": 1})
    assert r.code == "version_mismatch"
    assert c.ok("DELETE", "/v1/kv/job:1") == {"deleted": True}
    assert c.ok("DELETE", "/v1/kv/job:1") == {"deleted": False}
    r = c.lead("GET", "/v1/kv/job:1")
    assert (r.status, r.code, r.error["key"]) == (404, "not_found", "job:1")
    # listing by prefix with paging
    for i in range(5):
        c.ok("PUT", f"/v1/kv/list:{i}", {"value": i})
    page = c.ok("GET", "/v1/keys?prefix=list:&limit=3")
    assert page == {"keys": ["list:0", "list:1", "list:2"], "next": "list:2"}
    assert c.ok("GET", "/v1/keys?prefix=list:&limit=3&after=list:2") == {
        "keys": ["list:3", "list:4"],
        "next": None,
    }
    # msgpack both ways, bytes included
    raw = msgpack.packb({"value": {"blob": b"\x00\xff"}})
    r = c.lead("PUT", "/v1/kv/bin", raw=raw, content_type="application/msgpack", accept="application/msgpack")
    assert r.status == 200 and r.body["created"] is True
    assert c.ok("GET", "/v1/kv/bin")["value"] == {"blob": {"$bytes": "AP8="}}  # JSON spelling of bytes
    # stale reads on every node converge
    for n in c.ids:
        wait_until(lambda n=n: stale_get(c, n, "list:4").status == 200, 10, f"{n} to apply")


def test_size_limits_and_bad_input_are_refused_and_never_kill_a_node(c: Cluster) -> None:
    leader = c.wait_leader()
    follower = c.followers()[0]
    long_key = "k" * 65
    for method in ("GET", "PUT", "DELETE"):
        r = c.call(leader, method, f"/v1/kv/{long_key}", {"value": 1} if method == "PUT" else None)
        assert (r.status, r.code, r.error["limit"]) == (413, "key_too_large", 64), r
    r = c.call(leader, "POST", f"/v1/locks/{long_key}/acquire", {"owner": "w", "ttl": 1})
    assert r.code == "key_too_large"
    r = c.call(leader, "PUT", "/v1/kv/v", {"value": "x" * 3000})
    assert (r.status, r.code, r.error["limit"]) == (413, "value_too_large", 2048)
    assert "2048" in r.error["message"]
    r = c.call(leader, "PUT", "/v1/kv/v", raw=b'{"value": "' + b"x" * 9000 + b'"}')
    assert (r.status, r.code, r.error["limit"]) == (413, "request_too_large", 8192)
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", "/v1/kv/v", {"raw": b'{"value": '}),
        ("PUT", "/v1/kv/v", {"raw": b"\xc1\xc1", "content_type": "application/msgpack"}),
        ("PUT", "/v1/kv/v", {"raw": b"[" * 3000 + b"]" * 3000}),
        ("PUT", "/v1/kv/v", {"body": {"value": 1, "ttl": "soon"}}),
        ("PUT", "/v1/kv/v", {"body": {"value": 1, "ttl": 1, "expires_at": 5}}),
        ("PUT", "/v1/kv/v", {"body": {"vale": 1}}),
        ("PUT", "/v1/kv/v", {"body": [1, 2]}),
        ("POST", "/v1/kv/v/increment", {"body": {"by": "2"}}),
        ("POST", "/v1/kv/v/increment", {"body": {"by": 2**64}}),
        ("POST", "/v1/locks/L/acquire", {"body": {"owner": "w"}}),
        ("POST", "/v1/locks/L/renew", {"body": {"token": -1}}),
        ("POST", "/v1/sessions/abc/keepalive", {"body": {}}),
        ("GET", "/v1/keys?limit=0", {}),
        ("GET", "/v1/kv/v?consistency=maybe", {}),
    ]
    #: no such route: 404 with its own code (issue 19), never read as a missing key; a method the
    #: path does not take: 405 (issue 18)
    unknown = {("GET", "/v1/nothing/here"): 404, ("PATCH", "/v1/kv/v"): 405}
    for nid in (leader, follower):
        for method, path, kw in [*bad, ("GET", "/v1/nothing/here", {}), ("PATCH", "/v1/kv/v", {"body": {}})]:
            r = c.call(nid, method, path, **kw)
            status = unknown.get((method, path))
            want = (status, p.UNKNOWN_ENDPOINT) if status else (400, "invalid_request")
            assert (r.status, r.code) == want, (nid, method, path, r)
            assert r.error["message"]
    # nothing was half-applied, and every node still serves
    assert c.lead("GET", "/v1/kv/v").code == "not_found"
    for nid in c.ids:
        assert c.call(nid, "GET", "/health").status == 200
    assert c.ok("PUT", "/v1/kv/v", {"value": "fine"})["created"] is True


def test_followers_answer_not_leader_naming_the_leader(c: Cluster) -> None:
    """With ``X-Raftstate-Forward: never`` a follower answers 421 instead of forwarding
    (forwarding itself: tests/test_forwarding_cluster.py)."""
    leader = c.wait_leader()
    for nid in c.followers():
        for method, path, body in [
            ("POST", "/v1/kv/nl/increment", {}),
            ("POST", "/v1/locks/nl/acquire", {"owner": "w", "ttl": 5}),
            ("POST", "/v1/sessions", {}),
            ("GET", "/v1/keys", None),
            ("GET", "/v1/locks/nl", None),
        ]:
            r = c.call(nid, method, path, body, headers={p.FORWARD_HEADER: "never"})
            assert (r.status, r.code) == (421, "not_leader"), r
            assert (r.error["leader"], r.error["leader_address"]) == (leader, c.addr[leader])


# =========================================================================== TTL and cluster time


def test_ttl_expires_at_cluster_time_on_every_node_whatever_the_followers_clocks_say(c: Cluster) -> None:
    """Replicas with clocks skewed by ten minutes either way expire a key at the same cluster time
    as the leader, and reach byte-identical state applying the same log."""
    f_ahead, f_behind = c.followers()
    c.set_offset(f_ahead, +600_000)
    c.set_offset(f_behind, -600_000)
    time.sleep(0.2)
    ttl = 2.0
    t_put = time.monotonic()
    out = c.ok("PUT", "/v1/kv/ttl:skew", {"value": 1, "ttl": ttl})
    t_acked = time.monotonic()
    assert c.ok("GET", "/v1/kv/ttl:skew")["expires_at"] == out["expires_at"]
    for n in (f_ahead, f_behind):
        wait_until(lambda n=n: stale_get(c, n, "ttl:skew").status == 200, 5, f"{n} to apply the key")
    gone_after: dict[str, float] = {}
    leader = c.wait_leader()
    while len(gone_after) < 3 and time.monotonic() - t_put < ttl + 5:
        for n in c.ids:
            if n in gone_after:
                continue
            r = c.call(n, "GET", "/v1/kv/ttl:skew") if n == leader else stale_get(c, n, "ttl:skew")
            if r.status == 404:
                gone_after[n] = time.monotonic()
        time.sleep(0.02)
    assert set(gone_after) == set(c.ids), f"still there on {set(c.ids) - set(gone_after)}"
    for n, t in gone_after.items():
        # never before the lease's start + ttl; at most ~sweep interval + replication late
        assert t - t_put >= ttl - 0.05, f"{n} dropped the key {t - t_put:.2f}s after the put"
        assert t - t_acked <= ttl + 1.0, f"{n} still had the key {t - t_acked:.2f}s after the put"
    # every replica holds exactly the same bytes, whatever its clock says
    same_state_everywhere(c)


def test_a_leader_clock_stepping_back_never_moves_cluster_time_back(c: Cluster) -> None:
    leader = c.wait_leader()

    def cluster_time() -> int:
        t: int = c.call(leader, "GET", "/status").body["cluster_time_ms"]
        return t

    c.ok("PUT", "/v1/kv/jump:old", {"value": 1, "ttl": 0.5})
    wait_until(lambda: c.lead("GET", "/v1/kv/jump:old").status == 404, 5, "jump:old to expire")
    before = cluster_time()
    c.set_offset(leader, -300_000)  # the leader's clock steps back five minutes
    time.sleep(0.3)
    samples = [before]
    for _ in range(5):
        samples.append(cluster_time())
        time.sleep(0.05)
    assert samples == sorted(samples), f"cluster time went back: {samples}"
    # A key that expired before the step stays gone, on the leader and on the followers.
    assert c.lead("GET", "/v1/kv/jump:old").status == 404
    for n in c.followers():
        assert stale_get(c, n, "jump:old").status == 404
    # New expiries count from cluster time, which holds still until the clock catches up...
    out = c.ok("PUT", "/v1/kv/jump:new", {"value": 1, "ttl": 0.5})
    assert out["expires_at"] * 1000 >= before + 500
    time.sleep(1.0)
    assert c.lead("GET", "/v1/kv/jump:new").status == 200, "expired though cluster time held still"
    assert cluster_time() >= samples[-1]
    # ...and the key expires once cluster time passes its expiry (here: the clock is fixed).
    c.set_offset(leader, 0)
    wait_until(lambda: c.lead("GET", "/v1/kv/jump:new").status == 404, 3, "jump:new to expire")
    assert cluster_time() >= samples[-1]


# =========================================================================== locks


def test_lock_acquire_held_inspect_renew_release(c: Cluster) -> None:
    a = c.ok("POST", "/v1/locks/L1/acquire", {"owner": "worker-a", "ttl": 10})
    token = a["token"]
    r = c.lead("POST", "/v1/locks/L1/acquire", {"owner": "worker-b", "ttl": 10})
    assert (r.status, r.code, r.error["owner"], r.error["expires_at"]) == (
        409,
        "lock_held",
        "worker-a",
        a["expires_at"],
    )
    assert "'L1'" in r.error["message"]
    info = c.ok("GET", "/v1/locks/L1")
    assert info == {"name": "L1", "owner": "worker-a", "token": token, "expires_at": a["expires_at"]}
    renewed = c.ok("POST", "/v1/locks/L1/renew", {"token": token, "ttl": 20})
    assert renewed["expires_at"] > a["expires_at"]
    r = c.lead("POST", "/v1/locks/L1/renew", {"token": token + 1})
    assert (r.status, r.code) == (409, "lock_lost")
    r = c.lead("POST", "/v1/locks/L1/release", {"token": token - 1})
    assert (r.status, r.code) == (409, "lock_lost")
    assert c.ok("POST", "/v1/locks/L1/release", {"token": token}) == {"released": True}
    assert c.ok("POST", "/v1/locks/L1/release", {"token": token}) == {"released": False}
    r = c.lead("GET", "/v1/locks/L1")
    assert (r.status, r.code) == (404, "not_found")
    again = c.ok("POST", "/v1/locks/L1/acquire", {"owner": "worker-b", "ttl": 10})
    assert again["token"] > token
    c.ok("POST", "/v1/locks/L1/release", {"token": again["token"]})


def test_a_fenced_write_from_an_expired_holder_is_refused(c: Cluster) -> None:
    a = c.ok("POST", "/v1/locks/F1/acquire", {"owner": "a", "ttl": 1})["token"]
    assert c.ok("PUT", "/v1/kv/fenced", {"value": "a", "fence": {"lock": "F1", "token": a}})["created"]
    wait_until(lambda: c.lead("GET", "/v1/locks/F1").status == 404, 5, "the lease to run out")
    # A holder that was paused past its ttl comes back: its fenced writes are refused.
    r = c.lead("PUT", "/v1/kv/fenced", {"value": "a-late", "fence": {"lock": "F1", "token": a}})
    assert (r.status, r.code) == (409, "lock_lost") and "fenced" in r.error["message"]
    b = c.ok("POST", "/v1/locks/F1/acquire", {"owner": "b", "ttl": 10})["token"]
    assert b > a
    for method, path, body in [
        ("PUT", "/v1/kv/fenced", {"value": "a-late"}),
        ("DELETE", "/v1/kv/fenced", {}),
        ("POST", "/v1/kv/fenced-ctr/increment", {}),
    ]:
        r = c.lead(method, path, {**body, "fence": {"lock": "F1", "token": a}})
        assert r.code == "lock_lost", (path, r)
    c.ok("PUT", "/v1/kv/fenced", {"value": "b", "fence": {"lock": "F1", "token": b}})
    assert c.ok("GET", "/v1/kv/fenced")["value"] == "b"


def test_a_holder_renewing_every_third_of_its_ttl_keeps_the_lock_through_a_leader_kill(c: Cluster) -> None:
    ttl = 3.0
    token = c.ok("POST", "/v1/locks/R1/acquire", {"owner": "holder", "ttl": ttl})["token"]
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def renewer() -> None:
        next_at = time.monotonic() + ttl / 3
        while not stop.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            while not stop.is_set():  # retry until this renewal lands (the leader may be dead)
                try:
                    r = c.lead("POST", "/v1/locks/R1/renew?timeout=1", {"token": token}, timeout=2)
                except OSError:
                    r = Reply(0, None)
                results.append((time.monotonic(), r.status, r.code))
                if r.status == 200 or r.code == "lock_lost":
                    break
                time.sleep(0.05)
            next_at = time.monotonic() + ttl / 3

    t = threading.Thread(target=renewer, daemon=True)
    t.start()
    time.sleep(ttl / 3 + 0.2)
    old = c.wait_leader()
    c.kill(old)
    wait_until(lambda: c.leader([n for n in c.ids if n != old]), 10, "a new leader")
    time.sleep(ttl + 0.5)  # longer than the lease: only renewals keep it
    stop.set()
    t.join(10)
    assert not [r for r in results if r[2] == "lock_lost"], results
    assert sum(1 for r in results if r[1] == 200) >= 3, results
    info = c.ok("GET", "/v1/locks/R1")
    assert (info["token"], info["owner"]) == (token, "holder")
    c.ok("POST", "/v1/locks/R1/release", {"token": token})


def test_an_abandoned_lock_is_acquirable_within_ttl_plus_two_election_timeouts(c: Cluster) -> None:
    """The holder stops renewing and the leader is killed right after the last renewal."""
    ttl = 2.0
    token = c.ok("POST", "/v1/locks/A1/acquire", {"owner": "crashed", "ttl": ttl})["token"]
    sent = time.monotonic()
    c.ok("POST", "/v1/locks/A1/renew", {"token": token})
    renewed = time.monotonic()
    c.kill(c.wait_leader())
    acquired = None
    while time.monotonic() - renewed < ttl + 10:
        try:
            r = c.lead("POST", "/v1/locks/A1/acquire?timeout=1", {"owner": "waiter", "ttl": ttl}, timeout=2)
        except OSError:
            continue
        if r.status == 200:
            acquired = time.monotonic()
            assert r.body["token"] > token
            break
        assert r.code in ("lock_held", "unavailable", "outcome_unknown", "timeout"), r
        time.sleep(0.05)
    assert acquired is not None
    assert acquired - sent >= ttl, f"granted {acquired - sent:.2f}s after the renewal was sent: too early"
    bound = ttl + 2 * ELECTION_S
    assert acquired - renewed <= bound + 0.3, f"free only {acquired - renewed:.2f}s after the renewal"


# =========================================================================== sessions


def _session(c: Cluster) -> int:
    out = c.ok("POST", "/v1/sessions", {})
    assert out["idle_timeout_s"] == SETTINGS["session_idle_timeout_s"]
    sid: int = out["session"]
    return sid


def test_session_writes_apply_once_and_acks_bound_the_memory(c: Cluster) -> None:
    sid = _session(c)
    first = c.ok("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 1})
    assert first["value"] == 1
    assert c.ok("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 1}) == first
    assert c.ok("GET", "/v1/kv/once:ctr")["value"] == 1
    # an error is an outcome too: replayed, not re-evaluated
    r1 = c.lead("PUT", "/v1/kv/once:ctr", {"value": 0, "if_version": 1, "session": sid, "seq": 2})
    r2 = c.lead("PUT", "/v1/kv/once:ctr", {"value": 0, "if_version": 1, "session": sid, "seq": 2})
    assert r1.code == r2.code == "version_mismatch" and r1.body == r2.body
    # locks take sessions too
    lk = c.ok("POST", "/v1/locks/S1/acquire", {"owner": "w", "ttl": 30, "session": sid, "seq": 3})
    assert c.ok("POST", "/v1/locks/S1/acquire", {"owner": "w", "ttl": 30, "session": sid, "seq": 3}) == lk
    # acknowledged outcomes are forgotten; their seqs cannot be used again
    c.ok("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 4, "ack": 3})
    r = c.lead("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 1})
    assert (r.status, r.code) == (400, "invalid_request") and "forgotten" in r.error["message"]
    # at most max_session_results unacknowledged outcomes
    for seq in range(5, 12):
        c.ok("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": seq, "ack": 3})
    r = c.lead("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 12, "ack": 3})
    assert (r.status, r.code) == (400, "invalid_request") and "limit is 8" in r.error["message"]
    assert c.ok("POST", "/v1/kv/once:ctr/increment", {"session": sid, "seq": 12, "ack": 11})["value"] == 10
    assert c.ok("GET", "/v1/kv/once:ctr")["value"] == 10
    c.ok("POST", "/v1/locks/S1/release", {"token": lk["token"]})


def test_an_idle_session_expires_and_its_writes_are_refused(c: Cluster) -> None:
    sid = _session(c)
    c.ok("POST", "/v1/kv/idle/increment", {"session": sid, "seq": 1})
    assert c.ok("POST", f"/v1/sessions/{sid}/keepalive", {}) == {"ok": True}
    time.sleep(SETTINGS["session_idle_timeout_s"] + 0.3)
    for method, path, body in [
        ("POST", "/v1/kv/idle/increment", {"session": sid, "seq": 2}),
        ("POST", "/v1/kv/idle/increment", {"session": sid, "seq": 1}),  # even a replay
        ("POST", f"/v1/sessions/{sid}/keepalive", {}),
        ("POST", "/v1/sessions/999999/keepalive", {}),
    ]:
        r = c.lead(method, path, body)
        assert (r.status, r.code) == (410, "session_expired"), r
        assert "POST /v1/sessions" in r.error["message"]
    assert c.ok("GET", "/v1/kv/idle")["value"] == 1


def test_a_replayed_write_after_a_leader_kill_returns_the_first_outcome(c: Cluster) -> None:
    sid = _session(c)
    first = c.ok("POST", "/v1/kv/lc:ctr/increment", {"session": sid, "seq": 1})
    old = c.wait_leader()
    c.kill(old)
    wait_until(lambda: c.leader([n for n in c.ids if n != old]), 10, "a new leader")
    assert c.ok("POST", "/v1/kv/lc:ctr/increment", {"session": sid, "seq": 1}) == first
    assert c.ok("GET", "/v1/kv/lc:ctr") == {
        "key": "lc:ctr",
        "value": 1,
        "version": first["version"],
        "expires_at": None,
    }
    assert c.ok("POST", "/v1/kv/lc:ctr/increment", {"session": sid, "seq": 2, "ack": 1})["value"] == 2


def test_a_replayed_write_after_a_snapshot_install_returns_the_first_outcome(c: Cluster) -> None:
    """Duplicate detection survives snapshots: a follower that caught up by InstallSnapshot, then
    became leader, answers a replay from the sessions in that snapshot."""
    sid = _session(c)
    first = c.ok("POST", "/v1/kv/snap:ctr/increment", {"session": sid, "seq": 1})
    f = c.followers()[0]
    c.kill(f)

    def keepalive() -> None:  # the session idles out after 4 s: a loaded machine may take longer below
        c.ok("POST", f"/v1/sessions/{sid}/keepalive", {})

    for i in range(2 * SETTINGS["snapshot_threshold"]):
        c.ok("PUT", f"/v1/kv/snap:filler:{i % 10}", {"value": i})
        if i % 50 == 0:
            keepalive()
    leader = c.wait_leader()
    wait_until(
        lambda: c.call(leader, "GET", "/status").body["snapshot_index"] > first["version"], 10, "a snapshot"
    )
    keepalive()
    c.start_node(f)
    wait_until(
        lambda: keepalive() or "installed a snapshot" in c.log_text(f), 20, f"{f} to install a snapshot"
    )
    wait_until(lambda: keepalive() or stale_get(c, f, "snap:ctr").status == 200, 10, f"{f} to serve")
    c.ok("POST", f"/v1/sessions/{sid}/keepalive", {})
    assert c.ok("POST", "/v1/leader/transfer", {"to": f})["leader"] == f
    assert c.call(f, "POST", "/v1/kv/snap:ctr/increment", {"session": sid, "seq": 1}).body == first
    assert c.call(f, "GET", "/v1/kv/snap:ctr").body["value"] == 1
    same_state_everywhere(c)


# ===================================================================== timeout, unavailable, outcome_unknown


def test_timeout_outcome_unknown_and_unavailable(c: Cluster) -> None:
    leader = c.wait_leader()
    followers = c.followers()
    for n in followers:
        c.kill(n, signal.SIGSTOP)
    try:
        r = c.call(leader, "GET", "/v1/kv/anything?timeout=0.2")
        assert (r.status, r.code) == (504, "timeout"), r
        r = c.call(leader, "PUT", "/v1/kv/unknown?timeout=0.2", {"value": 1})
        assert (r.status, r.code) == (504, "outcome_unknown"), r
        assert "same session and seq" in r.error["message"]
    finally:
        for n in followers:
            c.kill(n, signal.SIGCONT)
    leader = c.wait_leader()
    # A leadership transfer to a paused node: writes are refused meanwhile, certainly not applied.
    target = c.followers()[0]
    c.kill(target, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            transfer = pool.submit(c.call, leader, "POST", "/v1/leader/transfer?timeout=1", {"to": target})
            time.sleep(0.1)
            r = c.call(leader, "PUT", "/v1/kv/during-transfer", {"value": 1})
            transfer.result()
        assert (r.status, r.code) == (503, "unavailable"), r
    finally:
        c.kill(target, signal.SIGCONT)
    c.wait_leader()
    assert c.lead("GET", "/v1/kv/during-transfer").code == "not_found"
