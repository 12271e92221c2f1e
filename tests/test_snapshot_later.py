"""KVStateMachine.snapshot_later(): the state as of the call, encoded later (in a thread while
applies go on) — byte-identical to snapshot() at the time of the call, unaffected by what is
applied in between (node/driver.py builds snapshots this way to keep heartbeats flowing)."""

from __future__ import annotations

from raftstate.node.state.machine import KVStateMachine, encode_command


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


def test_snapshot_bytes_are_one_packb_of_the_canonical_body_with_locks_and_sessions() -> None:
    """Packing row by row must give exactly the bytes of one packb (replicas compare digests)."""
    import msgpack

    sm = KVStateMachine()
    sm.apply(1, 1_001, encode_command("session_open", idle_timeout_ms=60_000, max_results=10))
    sm.apply(2, 1_002, encode_command("lock_acquire", name="L", owner="o", ttl_ms=60_000))
    sm.apply(3, 1_003, encode_command("set", key="k", value=b"\x00bytes", session=1, seq=1))
    sm.apply(4, 1_004, encode_command("incr", key="n", by=-3))
    assert sm.locks.rows() and sm.sessions.rows()
    body = {
        "format": 2,
        "applied_index": 4,
        "time_ms": 1_004,
        "keys": sm.keys.rows(),
        "locks": sm.locks.rows(),
        "sessions": sm.sessions.rows(),
    }
    assert sm.snapshot() == msgpack.packb(body, use_bin_type=True)
