"""KVStateMachine.snapshot_later(): the state as of the call, encoded later (in a thread while
applies go on) — byte-identical to snapshot() at the time of the call, unaffected by what is
applied in between (node/driver.py builds snapshots this way to keep heartbeats flowing)."""

from __future__ import annotations

from raftstate.node.state_machine import KVStateMachine, encode_command


def test_snapshot_later_encodes_the_state_of_the_call_not_of_the_encoding() -> None:
    sm = KVStateMachine()
    index = 0
    for i in range(50):
        index += 1
        sm.apply(index, 1_000 + index, encode_command("set", key=f"k{i:02d}", value={"n": i}))
    index += 1
    sm.apply(index, 1_000 + index, encode_command("incr", key="ctr", by=5))
    expected = sm.snapshot()
    build = sm.snapshot_later()
    for i in range(50):  # overwrite, add, delete and count on after the capture
        index += 1
        sm.apply(index, 1_000 + index, encode_command("set", key=f"k{i:02d}", value="changed"))
    index += 1
    sm.apply(index, 1_000 + index, encode_command("set", key="a-new-key", value=1))
    index += 1
    sm.apply(index, 1_000 + index, encode_command("delete", key="k07"))
    index += 1
    sm.apply(index, 1_000 + index, encode_command("incr", key="ctr", by=1))
    assert build() == expected
    restored = KVStateMachine()
    restored.restore(build())
    assert restored.snapshot() == expected and restored.get("ctr", 10**12).value == 5
    assert sm.snapshot() != expected  # the live state did move on
