"""The node's clock (with its test/chaos offset hook) and what "now" means for reads (cluster time)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from raftstate.node.driver import RaftDriver
from raftstate.node.runtime.clock import NodeClock
from raftstate.node.runtime.cluster_time import ClusterTime


class Fake:
    """A settable wall clock and monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 100.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def test_the_offset_file_shifts_the_clock_and_is_reread_at_most_every_tick(tmp_path: Path) -> None:
    f = Fake()
    path = tmp_path / "offset"
    path.write_text("-300000\n")
    clock = NodeClock(path, reread_s=0.05, wall=lambda: f.wall, monotonic=lambda: f.mono)
    base = int(f.wall * 1000)
    assert clock.now_ms() == base - 300_000
    path.write_text("1500.7")
    f.advance(0.01)  # within the same tick: the old offset still applies
    assert clock.now_ms() == base + 10 - 300_000
    f.advance(0.05)
    assert clock.now_ms() == base + 60 + 1501
    assert clock.offset_ms == 1501


def test_a_missing_or_bad_offset_file_means_zero_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = Fake()
    path = tmp_path / "offset"
    clock = NodeClock(path, reread_s=0.0, wall=lambda: f.wall, monotonic=lambda: f.mono)
    with caplog.at_level(logging.WARNING, logger="raftstate.node"):
        for content in (None, "soon", "nan", "1e400", ""):
            if content is not None:
                path.write_text(content)
            f.advance(0.1)
            assert clock.now_ms() == int(f.wall * 1000)
    warnings = [r for r in caplog.records if "clock offset file" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()


def test_cluster_time_never_goes_back_when_the_leader_clock_steps_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reads hold still, and entries are stamped no earlier than any read already answered, until
    the stepped-back clock catches up."""
    f = Fake()
    d = _driver(True, 0, 0)
    clock = NodeClock(None, wall=lambda: f.wall, monotonic=lambda: f.mono)
    ct = ClusterTime(clock.now_ms, monotonic=lambda: f.mono)
    ct.attach(cast(RaftDriver, d))
    t1 = ct.now_ms()
    assert t1 == int(f.wall * 1000) == ct.stamp_ms()
    f.wall -= 10  # NTP steps the clock back 10 s
    with caplog.at_level(logging.WARNING, logger="raftstate.node"):
        assert ct.now_ms() == t1 and ct.stamp_ms() == t1
        f.advance(5)
        assert ct.now_ms() == t1 and ct.stamp_ms() == t1
    assert sum("behind" in r.getMessage() for r in caplog.records) == 1
    f.advance(6)
    assert ct.now_ms() == t1 + 1000 == ct.stamp_ms()


def _driver(leader: bool, sm_time: int, log_time: int) -> Any:
    return SimpleNamespace(
        sm=SimpleNamespace(time_ms=sm_time),
        raft=SimpleNamespace(log=SimpleNamespace(last_time_ms=log_time)),
        is_leader=lambda: leader,
        apply_listeners=[],
    )


def test_a_leader_reads_at_the_time_it_would_stamp_on_a_new_entry() -> None:
    """Leader: max(last applied entry time, last stamp in its log, its clock)."""
    f = Fake()
    d = _driver(True, 1000, 2000)
    clock_ms = [1500]
    ct = ClusterTime(lambda: clock_ms[0], monotonic=lambda: f.mono)
    ct.attach(cast(RaftDriver, d))
    assert ct.now_ms() == 2000  # an appended, unapplied entry was stamped ahead of the clock
    clock_ms[0] = 5000
    assert ct.now_ms() == 5000


def test_a_follower_never_consults_its_own_clock() -> None:
    """Follower: last applied entry time + local monotonic time since it was applied here. A
    follower whose wall clock is minutes off reads at the same time as one whose clock is right."""
    f = Fake()
    d = _driver(False, 10_000, 10_000)

    def wall_clock() -> int:
        raise AssertionError("a follower's read time must not depend on its wall clock")

    ct = ClusterTime(wall_clock, monotonic=lambda: f.mono)
    ct.attach(cast(RaftDriver, d))
    assert ct.now_ms() == 10_000
    f.mono += 0.25
    assert ct.now_ms() == 10_250
    d.sm.time_ms = 10_100  # an entry stamped 10_100 is applied now, 0.30 s after the first
    f.mono += 0.05
    ct.on_apply(cast(Any, None))
    assert ct.now_ms() == 10_250  # the high-water mark: not back to 10_100
    f.mono += 0.5
    assert ct.now_ms() == 10_600
    d.sm.time_ms = 20_000  # a snapshot install jumps ahead without an apply
    assert ct.now_ms() == 20_000
