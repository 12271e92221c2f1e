"""The watch checker (node/chaos/checkers/watch.py) catches a dropped, a duplicated and a reordered
event on bad histories, and passes a good one."""

from __future__ import annotations

import itertools
from typing import Any

from raftstate.node.chaos.checkers.watch import WatchLog, check
from raftstate.node.chaos.history import Op

_ids = itertools.count()


def put(key: str, value: Any, version: int, f: str = "write", status: str = "ok") -> Op:
    return Op(next(_ids), "w", f, key, value, 0.0, 0.0, status, version)  # type: ignore[arg-type]


# The committed history: revisions 1..8 (3 and 6 are changes outside "reg:"; 5 is a cas whose
# answer carries no version: only the other watcher vouches for it).
OPS = [put("reg:0", "a", 1), put("reg:1", "b", 2), put("u:x", 1, 3, f="uwrite"), put("reg:0", "c", 4)]
OPS += [put("reg:1", "e", 7), put("reg:0", "f", 8, status="info")]  # 8: the answer was lost
HISTORY = [
    (1, "put", "reg:0", "a"),
    (2, "put", "reg:1", "b"),
    (4, "put", "reg:0", "c"),
    (5, "put", "reg:1", "d"),  # a compare-and-set
    (7, "put", "reg:1", "e"),
    (7, "delete", "reg:9", None),  # two events of one revision
    (8, "put", "reg:0", "f"),
]


def log(name: str, start: int, upto: int, events: list[tuple[int, str, str, Any]] | None = None) -> WatchLog:
    evs = [e for e in HISTORY if start <= e[0] <= upto] if events is None else events
    return WatchLog(name, "reg:", start, upto, evs, ["http://127.0.0.1:7001"])


def test_a_good_history_passes() -> None:
    res = check([log("w1", 1, 8), log("w2", 4, 8), log("w3", 2, 5)], OPS)
    assert res.verdict == "pass", res.anomalies
    assert res.ops_checked == 7 + 5 + 3


def test_a_dropped_acknowledged_event_is_caught_as_a_gap() -> None:
    events = [e for e in HISTORY if e[0] != 4]
    res = check([log("w1", 1, 8, events)], OPS)
    assert res.verdict == "fail"
    assert any("'reg:0'" in a and "version 4" in a and "gap" in a for a in res.anomalies), res.anomalies


def test_a_dropped_unacknowledged_event_is_caught_by_another_watcher() -> None:
    events = [e for e in HISTORY if e[0] != 5]  # the cas: no acknowledgement names its revision
    res = check([log("w1", 1, 8, events), log("w2", 3, 8)], OPS)
    assert res.verdict == "fail"
    assert any("w1 and w2" in a and "reg:1" in a and "@5" in a for a in res.anomalies), res.anomalies


def test_a_duplicated_event_is_caught() -> None:
    events = [*HISTORY[:3], HISTORY[2], *HISTORY[3:]]
    res = check([log("w1", 1, 8, events)], OPS)
    assert res.verdict == "fail"
    assert any("yielded twice" in a and "revision 4" in a for a in res.anomalies), res.anomalies


def test_a_reordered_event_is_caught() -> None:
    events = [HISTORY[0], HISTORY[2], HISTORY[1], *HISTORY[3:]]
    res = check([log("w1", 1, 8, events)], OPS)
    assert res.verdict == "fail"
    assert any("revision 2" in a and "after 4" in a and "reordered" in a for a in res.anomalies), (
        res.anomalies
    )


def test_a_wrong_value_and_an_event_outside_the_range_or_prefix_are_caught() -> None:
    events = [(1, "put", "reg:0", "zzz"), *HISTORY[1:], (8, "put", "u:x", 2)]
    res = check([log("w1", 2, 8, events)], OPS)
    text = "\n".join(res.anomalies)
    assert "before its start 2" in text and "not under the prefix" in text, text
    res = check([log("w1", 1, 8, events[:-1])], OPS)
    assert any("'zzz'" in a for a in res.anomalies), res.anomalies


def test_events_past_upto_are_not_held_to_completeness_and_no_watcher_is_unknown() -> None:
    res = check([log("w1", 1, 6, [e for e in HISTORY if e[0] <= 7 and e[1] != "delete"])], OPS)
    assert res.verdict == "pass", res.anomalies  # revision 7 is incomplete: its delete may follow
    assert check([log("w1", 5, 4, [])], OPS).verdict == "unknown"


def test_a_watch_log_round_trips_through_json() -> None:
    w = log("w1", 1, 8)
    assert WatchLog.from_json(w.to_json()) == w
