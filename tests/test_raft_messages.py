"""The wire codec of the core: every message and entry type round-trips through msgpack, and
anything malformed is refused with ValueError (a *remote* fault: it must never crash, corrupt or
mislead the receiving node — STYLE.md principle 8)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftstate.raft import (
    AppendEntries,
    AppendEntriesResp,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    Membership,
    Message,
    RequestVote,
    RequestVoteResp,
    SnapshotMeta,
    TimeoutNow,
    decode_message,
    encode_message,
)
from raftstate.raft.messages import entry_from_wire, entry_to_wire, meta_from_wire, meta_to_wire

ALL_TYPES = (
    RequestVote,
    RequestVoteResp,
    AppendEntries,
    AppendEntriesResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    TimeoutNow,
)

ids = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 2**31)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    voters = draw(st.frozensets(ids, max_size=5))
    learners = draw(st.frozensets(ids, max_size=3)) - voters
    addrs = draw(st.dictionaries(ids, ids, max_size=4))
    return Membership(voters, learners, tuple(sorted(addrs.items())))


entries = st.builds(Entry, u64, u64, u64, st.sampled_from(EntryKind), st.binary(max_size=64))
metas = st.builds(SnapshotMeta, u64, u64, memberships(), u64)


@st.composite
def contiguous_entries(draw: st.DrawFn, prev: int, prev_term: int) -> tuple[Entry, ...]:
    n = draw(st.integers(0, 5))
    # a log's terms (from the previous entry's on) and cluster times never decrease
    terms = sorted(draw(st.integers(prev_term, prev_term + 1000)) for _ in range(n))
    times = sorted(draw(u64) for _ in range(n))
    return tuple(
        Entry(
            prev + 1 + k,
            terms[k],
            times[k],
            draw(st.sampled_from(EntryKind)),
            draw(st.binary(max_size=32)),
        )
        for k in range(n)
    )


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    prev, prev_term = draw(small), draw(small)
    return AppendEntries(
        draw(u64), draw(ids), draw(ids), prev, prev_term, draw(contiguous_entries(prev, prev_term)), draw(u64)
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, u64, ids, ids, u64, u64, st.booleans(), st.booleans()),
    st.builds(RequestVoteResp, u64, ids, ids, st.booleans(), st.booleans()),
    appends(),
    st.builds(AppendEntriesResp, u64, ids, ids, st.booleans(), u64, u64, u64),
    st.builds(Heartbeat, u64, ids, ids, u64, u64),
    st.builds(HeartbeatResp, u64, ids, ids, u64),
    st.builds(InstallSnapshot, u64, ids, ids, metas, st.binary(max_size=256)),
    st.builds(InstallSnapshotResp, u64, ids, ids, u64),
    st.builds(TimeoutNow, u64, ids, ids),
)


def packed(w: Any) -> bytes:
    out: bytes = msgpack.packb(w, use_bin_type=True)
    return out


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=400, deadline=None, derandomize=True)
@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    """Encoding then decoding gives back an equal message of the same type, and re-encoding is
    byte-identical (the encoding is canonical)."""
    data = encode_message(msg)
    back = decode_message(data)
    assert type(back) is type(msg) and back == msg
    assert encode_message(back) == data


def test_the_strategy_covers_every_message_type() -> None:
    """Guard for the round-trip test: each of the nine message types is generated."""
    seen: set[type] = set()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(messages)
    def collect(m: Message) -> None:
        seen.add(type(m))

    collect()
    assert seen == set(ALL_TYPES)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(entries)
def test_entry_round_trips(e: Entry) -> None:
    """Log entries (every kind, any payload) survive the wire and storage encoding."""
    assert entry_from_wire(msgpack.unpackb(packed(entry_to_wire(e)), raw=False)) == e


@settings(max_examples=200, deadline=None, derandomize=True)
@given(metas)
def test_snapshot_meta_and_membership_round_trip(m: SnapshotMeta) -> None:
    """Snapshot metadata, with its membership (voters, learners, addresses), round-trips."""
    assert meta_from_wire(msgpack.unpackb(packed(meta_to_wire(m)), raw=False)) == m


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(ConfChangeOp), ids, ids, memberships())
def test_conf_change_round_trips(op: ConfChangeOp, node: str, address: str, result: Membership) -> None:
    """A configuration entry's payload decodes to the same change and resulting membership."""
    cc = ConfChange(op, node, address)
    assert ConfChange.decode_with_result(cc.encode(result)) == (cc, result)
    assert ConfChange.decode(cc.encode(result)) == cc


# ------------------------------------------------------------------------------ malformed input

M = Membership(frozenset("ab")).to_wire()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved byte"),
        pytest.param(b"\x93\x01", id="truncated array"),
        pytest.param(packed({"type": 1}), id="a map"),
        pytest.param(packed("hello"), id="a string"),
        pytest.param(packed([]), id="empty array"),
        pytest.param(packed([99, 1, "a", "b"]), id="unknown type"),
        pytest.param(packed([[1], 1, "a", "b"]), id="unhashable type"),
        pytest.param(packed([1, 1, "a", "b"]), id="too few fields"),
        pytest.param(packed([9, 1, "a", "b", 0]), id="too many fields"),
        pytest.param(packed([6, 1, "a", "b"]), id="old HeartbeatResp arity"),
        pytest.param(encode_message(TimeoutNow(1, "a", "b")) + b"\x00", id="trailing bytes"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, 5, 0]), id="entries not a list"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [[1, 1, 0, 9, b""]], 0]), id="bad entry kind"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [[1, 1, 0, 0]], 0]), id="short entry"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [[1, 1, 0, 0, "str"]], 0]), id="entry data str"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [[1, 1, 0, 0, 3]], 0]), id="entry data int"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [[1, 1, 0, 0, 2**64 - 1]], 0]), id="entry data huge int"),
        pytest.param(packed([3, 1, "a", "b", 0, 0, [["1", 1, 0, 0, b""]], 0]), id="entry index str"),
        pytest.param(packed([7, 1, "a", "b", [1], b""]), id="short meta"),
        pytest.param(packed([7, 1, "a", "b", [1, 1, [["a"], ["a"], []], 0], b""]), id="voter and learner"),
        pytest.param(packed([7, 1, "a", "b", [1, 1, [[], [], [["a"]]], 0], b""]), id="bad address pair"),
    ],
)
def test_malformed_input_raises_value_error(data: bytes) -> None:
    """Anything that is not a well-formed message is refused with ValueError — never another
    exception type, never a half-built message."""
    with pytest.raises(ValueError, match="malformed raft message"):
        decode_message(data)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_value_error(data: bytes) -> None:
    """Random bytes either decode to a message or raise ValueError, nothing else."""
    try:
        decode_message(data)
    except ValueError:
        pass


@settings(max_examples=150, deadline=None, derandomize=True)
@given(messages)
def test_every_truncation_raises_value_error(msg: Message) -> None:
    """A message cut short anywhere (a torn frame) is refused with ValueError."""
    data = encode_message(msg)
    for k in range(len(data)):
        with pytest.raises(ValueError):
            decode_message(data[:k])


def _wrong(field_index: int, value: Any, base: list[Any]) -> bytes:
    w = list(base)
    w[field_index] = value
    return packed(w)


RV = [1, 1, "a", "b", 0, 0, False, False]
AE = [3, 1, "a", "b", 0, 0, [], 0]
IS = [7, 1, "a", "b", [1, 1, M, 0], b""]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_wrong(1, "1", RV), id="term str (step raises TypeError)"),
        pytest.param(_wrong(1, None, [9, 1, "a", "b"]), id="term None"),
        pytest.param(_wrong(2, 5, RV), id="src int"),
        pytest.param(
            _wrong(4, "no", [2, 1, "a", "b", False, False]),
            id="granted str (counted as a vote)",
        ),
        pytest.param(_wrong(4, 1.5, AE), id="prev_index float"),
        pytest.param(_wrong(7, -4, AE), id="commit negative"),
        pytest.param(_wrong(5, "text", IS), id="snapshot data str"),
        pytest.param(_wrong(4, ["5", 1, M, 0], IS), id="meta index str"),
        pytest.param(
            _wrong(4, [5, 1, ["ab", [], []], 0], IS),
            id="voters str",
        ),
        pytest.param(_wrong(0, True, RV), id="type bool"),
    ],
)
def test_fields_of_the_wrong_type_raise_value_error(data: bytes) -> None:
    """A field of the wrong type (a string term, a non-bool grant, a float index, a string where
    bytes belong) is malformed input: ValueError at decode, not a TypeError later inside the core,
    and never a silently coerced or truthy value (a "no" string would count as a granted vote)."""
    with pytest.raises(ValueError):
        decode_message(data)


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([[5, 1, 0, 0, b""]], id="gap after prev"),
        pytest.param([[1, 1, 0, 0, b""], [1, 1, 0, 0, b""]], id="duplicate index"),
        pytest.param([[1, 2, 0, 0, b""], [2, 1, 0, 0, b""]], id="decreasing term"),
        pytest.param([[6, 1, 0, 0, b""]], id="term below prev_term"),
        pytest.param([[6, 2, 9, 0, b""], [7, 2, 8, 0, b""]], id="time going back"),
    ],
)
def test_append_entries_must_run_contiguously_from_prev(entries: list[Any]) -> None:
    """An AppendEntries whose entries do not run prev_index+1, prev_index+2, … with terms from
    prev_term up and non-decreasing cluster times cannot come from a leader's log: it is malformed
    (ValueError), refused before the core (which asserts that order on its own log) sees it."""
    prev_index, prev_term = (5, 2) if entries[0][0] >= 6 else (0, 0)
    with pytest.raises(ValueError, match="must run from prev_index"):
        decode_message(packed([3, 2, "a", "b", prev_index, prev_term, entries, 0]))
