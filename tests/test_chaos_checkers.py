"""Trust in the chaos checkers: each is fed known-bad histories (must fail) and known-good ones,
including concurrency and unknown outcomes (must pass); the WGL checker is also compared with a
brute-force checker on tiny random histories."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raftstate.node.chaos.checkers import (
    counters,
    dedupe,
    durability,
    linearizable,
    locks,
    preloaded,
    replicas,
    ttl,
)
from raftstate.node.chaos.history import INFINITY, History, Op, Status, load

_ids = itertools.count()


def op(f: str, key: str, value: Any = None, t: tuple[float, float] = (0, 1), status: Status = "ok",
       result: Any = None, process: str = "p", wall: tuple[float, float] | None = None) -> Op:
    o = Op(next(_ids), process, f, key, value, t[0], t[0] if wall is None else wall[0], status, result)
    if status != "info":
        o.complete_t = t[1]
        o.complete_wall = t[1] if wall is None else wall[1]
    return o


def lin(*ops: Op) -> str:
    return linearizable.check(list(ops)).verdict


# ------------------------------------------------------------------ linearizability


def test_stale_read_is_caught() -> None:
    assert lin(op("write", "k", "a", (0, 1)), op("write", "k", "b", (2, 3)),
               op("read", "k", None, (4, 5), result="a")) == "fail"


def test_read_of_a_value_never_written_is_caught() -> None:
    assert lin(op("write", "k", "a", (0, 1)), op("read", "k", None, (2, 3), result="zzz")) == "fail"


def test_lost_write_then_initial_value_read_is_caught() -> None:
    assert lin(op("write", "k", "a", (0, 1)), op("read", "k", None, (2, 3), result=None)) == "fail"


def test_reads_must_not_go_back_in_time() -> None:
    # both writes concurrent with both reads, but once a read saw b, a later read cannot see a
    w1, w2 = op("write", "k", "a", (0, 10)), op("write", "k", "b", (0, 10))
    assert lin(w1, w2, op("read", "k", None, (1, 2), result="b"), op("read", "k", None, (1, 2), result="a"),
               op("read", "k", None, (3, 4), result="b"), op("read", "k", None, (5, 6), result="a")) == "fail"


def test_concurrent_reads_may_see_old_or_new() -> None:
    assert lin(op("write", "k", "a", (0, 1)), op("write", "k", "b", (2, 6)),
               op("read", "k", None, (3, 4), result="a"), op("read", "k", None, (3, 5), result="b"),
               op("read", "k", None, (7, 8), result="b")) == "pass"


def test_unknown_write_may_apply_late_or_never() -> None:
    assert lin(op("write", "k", "a", (0, 1)), op("write", "k", "b", (2, 0), status="info"),
               op("read", "k", None, (3, 4), result="a"), op("read", "k", None, (9, 10), result="b"),
               ) == "pass"
    assert lin(op("write", "k", "a", (0, 1)), op("write", "k", "b", (2, 0), status="info"),
               op("read", "k", None, (9, 10), result="a")) == "pass"
    # but not before it was invoked
    assert lin(op("write", "k", "a", (0, 1)), op("read", "k", None, (2, 3), result="b"),
               op("write", "k", "b", (4, 0), status="info")) == "fail"


def test_cas_semantics() -> None:
    w = op("write", "k", "a", (0, 1))
    assert lin(w, op("cas", "k", ["a", "b"], (2, 3), result=True), op("read", "k", None, (4, 5), result="b")
               ) == "pass"
    assert lin(w, op("cas", "k", ["a", "b"], (2, 3), result=False)) == "fail"  # it should have matched
    assert lin(w, op("cas", "k", ["x", "b"], (2, 3), result=True)) == "fail"
    # an unknown cas applies exactly when it matches
    assert lin(w, op("cas", "k", ["a", "b"], (2, 0), status="info"),
               op("read", "k", None, (4, 5), result="b")) == "pass"
    assert lin(w, op("cas", "k", ["x", "b"], (2, 0), status="info"),
               op("read", "k", None, (4, 5), result="b")) == "fail"


def test_failed_ops_are_ignored_and_budget_answers_unknown() -> None:
    assert lin(op("write", "k", "a", (0, 1), status="fail"), op("read", "k", None, (2, 3), result=None)
               ) == "pass"
    many = [op("write", "k", f"v{i}", (0, 100)) for i in range(14)]
    many.append(op("read", "k", None, (101, 102), result="nope"))
    assert linearizable.check(many, budget=500).verdict == "unknown"


def brute_force(ops: list[Op]) -> bool:
    """Every order consistent with real time, replayed through the model: the definition itself."""
    ops = linearizable.relevant(ops)

    def search(done: frozenset[int], state: Any) -> bool:
        if len(done) == len(ops):
            return True
        for i, o in enumerate(ops):
            if i in done:
                continue
            # o may go next only if no other pending op completed before o was invoked
            if any(j not in done and j != i and p.complete_t < o.invoke_t for j, p in enumerate(ops)):
                continue
            legal, after = linearizable.step(state, o)
            if legal and search(done | {i}, after):
                return True
        return False

    return search(frozenset(), None)


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 6))
    values = [f"v{i}" for i in range(n)]
    out = []
    for i in range(n):
        f = draw(st.sampled_from(["read", "write", "cas"]))
        start = draw(st.integers(0, 8))
        end = start + draw(st.integers(0, 4))
        status: Status = draw(st.sampled_from(["ok", "ok", "info"])) if f != "read" else "ok"
        if f == "read":
            out.append(op(f, "k", None, (start, end), result=draw(st.sampled_from([None, *values]))))
        elif f == "write":
            out.append(op(f, "k", values[i], (start, end), status=status))
        else:
            expected = draw(st.sampled_from([None, *values]))
            out.append(op(f, "k", [expected, values[i]], (start, end), status=status,
                          result=draw(st.booleans())))
    return out


@settings(max_examples=400, deadline=None)
@given(tiny_histories())
def test_wgl_agrees_with_brute_force(ops: list[Op]) -> None:
    assert linearizable.check_key(ops)[0] == brute_force(ops)


# ------------------------------------------------------------------ counters


def incs(n: int, unknown: int = 0) -> list[Op]:
    return ([op("incr", "c", 1, (i, i + 0.5), result=i + 1) for i in range(n)]
            + [op("incr", "c", 1, (50, 0), status="info") for _ in range(unknown)])


def test_counters() -> None:
    assert counters.check(incs(3), {"c": 3}).verdict == "pass"
    assert counters.check(incs(3), {"c": 4}).verdict == "fail"  # double increment
    assert counters.check(incs(3), {"c": 2}).verdict == "fail"  # lost increment
    assert counters.check(incs(3, unknown=2), {"c": 4}).verdict == "pass"
    assert counters.check(incs(3, unknown=2), {"c": 6}).verdict == "fail"
    dup = incs(2)
    dup[1].result = 1  # two increments answered with the same value
    assert counters.check(dup, {"c": 2}).verdict == "fail"


# ------------------------------------------------------------------ locks


def lock_history(write_tokens_by_version: list[tuple[int, int]]) -> list[Op]:
    out = [op("acquire", "L", None, (1, 2), result=10, process="a"),
           op("acquire", "L", None, (5, 6), result=20, process="b")]
    for token, version in write_tokens_by_version:
        out.append(op("fenced-write", "L:data", {"lock": "L", "token": token}, (7, 8), result=version))
    return out


def test_locks() -> None:
    assert locks.check(lock_history([(10, 15), (20, 25), (20, 30)])).verdict == "pass"
    # overlapping holders: the old holder's write applied after the new holder's
    assert locks.check(lock_history([(10, 15), (20, 25), (10, 30)])).verdict == "fail"
    # a write carrying a token that was no longer current when it applied
    assert locks.check(lock_history([(10, 22)])).verdict == "fail"
    # tokens must grow: b acquired after a was acknowledged, with a smaller token
    bad = [op("acquire", "L", None, (1, 2), result=10), op("acquire", "L", None, (3, 4), result=5)]
    assert locks.check(bad).verdict == "fail"


# ------------------------------------------------------------------ dedupe


def test_dedupe() -> None:
    a = op("claim", "d", "a", result=True, process="a")
    b = op("claim", "d", "b", result=False, process="b")
    assert dedupe.check([a, b], {"d": "a"}).verdict == "pass"
    b2 = op("claim", "d", "b", result=True, process="b")
    assert dedupe.check([a, b2], {"d": "a"}).verdict == "fail"  # two winners
    assert dedupe.check([a, b], {"d": "b"}).verdict == "fail"  # the loser's value is there
    u = op("claim", "d", "u", status="info")
    assert dedupe.check([b, u], {"d": "u"}).verdict == "pass"
    assert dedupe.check([b, u], {"d": None}).verdict == "pass"
    assert dedupe.check([b], {"d": None}).verdict == "fail"  # taken by nobody


# ------------------------------------------------------------------ TTL


def mark(expires: float) -> Op:
    return op("mark", "m", {"expires_at": expires}, (0, 1), result=7, wall=(1000, 1001))


def mread(found: bool, wall: tuple[float, float], expires: float = 1010) -> Op:
    result = {"value": 1, "expires_at": expires} if found else None
    return op("mark-read", "m", None, (wall[0] - 1000, wall[1] - 1000), result=result, wall=wall)


def test_ttl() -> None:
    m = mark(1010)
    assert ttl.check([m, mread(True, (1005, 1006)), mread(False, (1011, 1012))]).verdict == "pass"
    assert ttl.check([m, mread(True, (1012, 1013))]).verdict == "fail"  # read after expiry
    assert ttl.check([m, mread(False, (1005, 1006))]).verdict == "fail"  # missing before expiry
    # within the clock skew that was injected: allowed
    assert ttl.check([m, mread(True, (1012, 1013))], back_s=3).verdict == "pass"
    assert ttl.check([m, mread(False, (1005, 1006))], ahead_s=5).verdict == "pass"
    assert ttl.check([m, mread(True, (1005, 1006), expires=1011)]).verdict == "fail"  # wrong expiry


# ------------------------------------------------------------------ durability


def test_durability() -> None:
    w1, w2 = op("write", "k", "a", (0, 1)), op("write", "k", "b", (2, 3))
    assert durability.check([w1, w2], {"k": "b"}).verdict == "pass"
    assert durability.check([w1, w2], {"k": "a"}).verdict == "fail"  # lost acknowledged write b
    assert durability.check([w1, w2], {"k": None}).verdict == "fail"
    assert durability.check([w1, w2], {"k": "zzz"}).verdict == "fail"
    late = op("write", "k", "c", (2.5, 0), status="info")
    assert durability.check([w1, w2, late], {"k": "c"}).verdict == "pass"  # unknown outcome: may win
    concurrent = op("write", "k", "x", (0, 5))
    assert durability.check([w1, w2, concurrent], {"k": "x"}).verdict == "pass"
    uw = op("uwrite", "u:1", 1)
    assert durability.check([uw], {"u:1": None}).verdict == "fail"


# ------------------------------------------------------------------ replicas (state digests at the end)


def dig(index: int, sha: str) -> dict[str, Any]:
    return {"applied_index": index, "sha256": sha}


def test_replicas() -> None:
    same = {"n1": dig(90, "a" * 64), "n2": dig(90, "a" * 64), "n3": dig(90, "a" * 64)}
    assert replicas.check(same, 1.0).verdict == "pass"
    diverged = replicas.check({**same, "n3": dig(90, "b" * 64)}, 1.0)  # same index, another state
    assert diverged.verdict == "fail" and "n3: bbbb" in diverged.anomalies[0], diverged.anomalies
    stuck = replicas.check({**same, "n2": dig(70, "c" * 64)}, 60.0)  # a replica never caught up
    assert stuck.verdict == "fail" and "n2 at 70" in stuck.anomalies[0], stuck.anomalies
    assert replicas.check({**same, "n1": None}, 60.0).verdict == "unknown"  # a node never answered
    assert replicas.check({}, 0.0).verdict == "unknown"


# ------------------------------------------------------------------ preloaded bulk (a sample read back)


def test_preloaded_sample() -> None:
    written = {"webhooks:stripe:evt_1": "v", "webhooks:slack:evt_2": "v"}
    assert preloaded.check(written, dict(written), 2).verdict == "pass"
    lost = preloaded.check(written, {**written, "webhooks:slack:evt_2": None}, 2)  # acknowledged, gone
    assert lost.verdict == "fail" and "missing at the end" in lost.anomalies[0]
    changed = preloaded.check(written, {**written, "webhooks:stripe:evt_1": "w"}, 2)
    assert changed.verdict == "fail" and "holds 'w'" in changed.anomalies[0]
    partly = preloaded.check(written, {"webhooks:stripe:evt_1": "v"}, 2)  # what was read is checked
    assert partly.verdict == "pass" and partly.ops_checked == 1 and "1 not read back" in partly.note
    assert preloaded.check(written, {}, 2).verdict == "unknown"


def test_history_round_trip(tmp_path: Any) -> None:
    h = History(tmp_path / "h.jsonl")
    a = h.invoke("w", "write", "k", "v")
    h.complete(a, "ok", 3)
    b = h.invoke("w", "write", "k", "v2")
    h.complete(b, "info", error="OutcomeUnknown")
    h.close()
    back = load(tmp_path / "h.jsonl")
    assert [(o.f, o.status, o.result) for o in back] == [("write", "ok", 3), ("write", "info", None)]
    assert back[1].complete_t == INFINITY and back[0].complete_t >= back[0].invoke_t
