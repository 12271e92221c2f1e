"""Property tests of every decoder that reads bytes from outside: peer frames (node/peers/wire.py and the
core's message_from_wire), log commands (node/state/commands.py), and the on-disk log reader under random
corruption. Each may refuse its input, only in its own documented way, and never crash."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftstate.node.errors import Refusal
from raftstate.node.peers.wire import FrameError, decode_frame, encode_frame, encode_one
from raftstate.node.state.commands import SCHEMA, decode
from raftstate.node.storage.errors import StorageCorruption
from raftstate.node.storage.log_store import SegmentedLog
from raftstate.raft.messages import AppendEntries, Entry, Heartbeat, RequestVote, message_from_wire

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# msgpack-able values, including the awkward ones: huge ints, bytes, nesting, non-str keys
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # msgpack's range
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 9)), inner, max_size=5),
    ),
    max_leaves=25,
)


def valid_frame() -> bytes:
    msgs = [
        RequestVote(3, "n1", "n2", 10, 2),
        AppendEntries(3, "n1", "n2", 4, 2, (Entry(5, 3, 1000, data=b"x" * 20), Entry(6, 3, 1001)), 4),
        Heartbeat(3, "n1", "n2", commit=4, seq=9),
    ]
    return encode_frame(encode_one(m) for m in msgs)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_are_a_frame_error_or_messages(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError:
        pass


@FAST
@given(st.data())
def test_mutated_valid_frames_never_crash_the_decoder(data: st.DataObject) -> None:
    frame = bytearray(valid_frame())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(frame)))
    for candidate in (bytes(frame), bytes(frame[:cut])):
        try:
            msgs = decode_frame(candidate)
        except FrameError:
            continue
        for m in msgs:  # whatever passed is well-formed: it round-trips
            assert decode_frame(encode_frame([encode_one(m)])) == [m]


@FAST
@given(st.lists(values, min_size=0, max_size=12))
def test_random_wire_shapes_are_refused_with_value_error(w: list[Any]) -> None:
    for shaped in (w, [0, *w], [1, *w], [2, *w], [5, *w]):
        try:
            message_from_wire(shaped)
        except ValueError:
            pass


def test_deep_nesting_and_huge_numbers_in_frames() -> None:
    for payload in (
        b"\x91" + b"\x91" * 5000 + b"\xc0",  # a frame holding one message nested 5000 deep
        msgpack.packb([[0, 2**64 - 1, "n1", "n2", 1, 1, False, False]]),
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items, then nothing
        b"\x91" * 100_000,  # 100k nested one-element arrays
    ):
        try:
            decode_frame(payload)
        except FrameError:
            pass


commands = st.fixed_dictionaries(
    {"op": st.sampled_from([*SCHEMA, "nope"])},
    optional={
        k: values
        for k in (
            *("key", "value", "ttl_ms", "expires_at_ms", "by", "name", "owner", "token", "id", "keys"),
            *(
                "session",
                "seq",
                "ack",
                "fence_lock",
                "fence_token",
                "max_locks",
                "max_sessions",
                "if_version",
            ),
        )
    },
)


@FAST
@given(
    st.one_of(
        st.binary(max_size=200),
        values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        commands.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    )
)
def test_log_commands_decode_or_refuse_as_command_errors(data: bytes) -> None:
    try:
        decode(data)
    except Refusal:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_the_log_reader_under_random_corruption_returns_a_prefix_or_reports_corruption(seed: int) -> None:
    """Damage anywhere: byte flips, a cut, garbage appended, across several segments. Opening the
    log either returns a prefix of what was written (a torn tail is cut) or raises
    StorageCorruption naming the file — never wrong entries, never another exception."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d) / "log"
        log, _ = SegmentedLog.open(directory, segment_bytes=600)
        written = [
            Entry(i, 1 + i // 7, 1000 + i, data=rng.randbytes(rng.randrange(0, 60))) for i in range(1, 40)
        ]
        log.append(written)
        log.sync()
        log.close()
        files = sorted(directory.iterdir())
        for _ in range(rng.randrange(1, 4)):
            f = rng.choice(files)
            raw = bytearray(f.read_bytes())
            action = rng.choice(["flip", "cut", "garbage", "zero"])
            if action == "flip" and raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            elif action == "cut" and raw:
                del raw[rng.randrange(len(raw)) :]
            elif action == "garbage":
                raw += rng.randbytes(rng.randrange(1, 40))
            elif action == "zero" and raw:
                start = rng.randrange(len(raw))
                n = min(rng.randrange(1, 30), len(raw) - start)
                raw[start : start + n] = bytes(n)
            f.write_bytes(bytes(raw))
        try:
            reopened, entries = SegmentedLog.open(directory, segment_bytes=600)
        except StorageCorruption as exc:
            assert str(directory) in str(exc)
            return
        reopened.close()
        assert entries == written[: len(entries)], f"seed {seed}: the reader returned entries never written"
