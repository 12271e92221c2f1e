"""The segmented on-disk log (raftstate.node.storage.log_store): records, rotation, truncation, recovery.

Every test uses real files in a temp dir and real fsyncs. Corruption tests damage the bytes the
way disks and crashes do, then check the one rule: a torn tail of the last segment is repaired with
a warning; anything else refuses to start, naming the file, the offset and the entry index.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftstate.node.storage.errors import StorageCorruption
from raftstate.node.storage.log_store import SegmentedLog, encode_record, segment_name
from raftstate.raft.messages import Entry

LOGGER = "raftstate.node.storage.log_store"


def ent(index: int, term: int = 1, size: int = 20) -> Entry:
    return Entry(index, term, time_ms=index * 10, data=bytes([index % 251]) * size)


def ents(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [ent(i, term, size) for i in range(lo, hi + 1)]


def open_log(
    d: Path, *, skip_through: int = 0, segment_bytes: int = 1024
) -> tuple[SegmentedLog, list[Entry]]:
    return SegmentedLog.open(d, skip_through=skip_through, segment_bytes=segment_bytes)


def write(d: Path, entries: list[Entry], *, segment_bytes: int = 1024) -> SegmentedLog:
    lg, _ = open_log(d, segment_bytes=segment_bytes)
    lg.append(entries)
    lg.sync()
    lg.close()
    return lg


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("log-*.seg"))


@contextmanager
def captured_warnings() -> Iterator[list[logging.LogRecord]]:
    """Like caplog, but usable inside hypothesis examples (caplog is function-scoped)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(logging.WARNING)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- normal operation


def test_round_trip_and_record_format(tmp_path: Path) -> None:
    """Records are length | crc32 | msgpack(entry), back to back, in log-<first index>.seg."""
    entries = ents(1, 5)
    write(tmp_path, entries)
    assert [p.name for p in segments(tmp_path)] == [segment_name(1)] == ["log-00000000000000000001.seg"]
    assert segments(tmp_path)[0].read_bytes() == b"".join(encode_record(e) for e in entries)
    lg, got = open_log(tmp_path)
    assert got == entries
    assert (lg.first_index, lg.last_index, lg.next_index) == (1, 5, 6)


def test_overwrite_from_a_middle_index_truncates_then_appends(tmp_path: Path) -> None:
    """An append at or below the last index first truncates the stored log there (a leader's
    conflicting suffix replaces ours), physically: the file shrinks to that record's offset."""
    lg, _ = open_log(tmp_path, segment_bytes=1 << 20)
    lg.append(ents(1, 10))
    lg.sync()
    size_before_6 = sum(len(encode_record(e)) for e in ents(1, 5))
    lg.append(ents(6, 7, term=2))
    lg.sync()
    assert segments(tmp_path)[0].stat().st_size == size_before_6 + sum(
        len(encode_record(e)) for e in ents(6, 7, term=2)
    )
    lg.close()
    _, got = open_log(tmp_path)
    assert got == ents(1, 5) + ents(6, 7, term=2)


def test_truncation_across_segments_deletes_later_segments(tmp_path: Path) -> None:
    lg, _ = open_log(tmp_path, segment_bytes=200)
    lg.append(ents(1, 30))
    lg.sync()
    n_before = len(segments(tmp_path))
    assert n_before > 3
    lg.append(ents(4, 5, term=3))
    lg.sync()
    lg.close()
    assert len(segments(tmp_path)) < n_before
    _, got = open_log(tmp_path, segment_bytes=200)
    assert got == ents(1, 3) + ents(4, 5, term=3)


def test_truncation_at_the_first_index_of_a_segment(tmp_path: Path) -> None:
    lg, _ = open_log(tmp_path, segment_bytes=200)
    lg.append(ents(1, 20))
    lg.sync()
    second = segments(tmp_path)[1]
    first_of_second = int(second.name[4:24])
    lg.append([ent(first_of_second, term=2)])
    lg.sync()
    lg.close()
    _, got = open_log(tmp_path, segment_bytes=200)
    assert got == [*ents(1, first_of_second - 1), ent(first_of_second, term=2)]


def test_append_rejects_gaps_and_non_contiguous_batches(tmp_path: Path) -> None:
    lg, _ = open_log(tmp_path)
    lg.append(ents(1, 3))
    with pytest.raises(ValueError, match=r"accepts 1\.\.4"):
        lg.append([ent(5)])
    with pytest.raises(ValueError, match="not contiguous"):
        lg.append([ent(4), ent(6)])
    lg.sync()
    lg.close()
    assert open_log(tmp_path)[1] == ents(1, 3)  # nothing of the refused batches was written


def test_rotation_makes_segments_named_by_their_first_index(tmp_path: Path) -> None:
    """A segment is closed once the next record would take it beyond the size threshold."""
    write(tmp_path, ents(1, 40), segment_bytes=300)
    segs = segments(tmp_path)
    assert len(segs) > 3
    expected_first = 1
    for p in segs:
        assert p.stat().st_size <= 300
        assert int(p.name[4:24]) == expected_first
        expected_first += p.stat().st_size // len(encode_record(ent(1)))
    assert open_log(tmp_path, segment_bytes=300)[1] == ents(1, 40)


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    write(tmp_path, [ent(1), ent(2, size=5000), ent(3)], segment_bytes=300)
    assert len(segments(tmp_path)) == 3
    assert open_log(tmp_path)[1] == [ent(1), ent(2, size=5000), ent(3)]


def test_compaction_deletes_only_whole_segments_below_the_index(tmp_path: Path) -> None:
    lg, _ = open_log(tmp_path, segment_bytes=200)
    lg.append(ents(1, 30))
    lg.sync()
    firsts = [int(p.name[4:24]) for p in segments(tmp_path)]
    keep_from = firsts[2]
    lg.compact(keep_from)  # entry keep_from+1 lives in segment #2: #0 and #1 go
    lg.sync()
    assert [int(p.name[4:24]) for p in segments(tmp_path)] == firsts[2:]
    lg.compact(10_000)  # never the last segment: it holds the log's end
    assert len(segments(tmp_path)) == 1
    lg.close()
    _, got = open_log(tmp_path, skip_through=30)
    assert got[-1] == ent(30)


def test_open_skips_segments_below_the_snapshot_even_with_holes(tmp_path: Path) -> None:
    """A compaction interrupted by a crash may leave old segments behind, with holes between
    them (unlinks persist in any order): they hold only snapshot-covered entries and are skipped."""
    write(tmp_path, ents(1, 40), segment_bytes=200)
    segs = segments(tmp_path)
    segs[1].unlink()  # a hole low in the log
    firsts = [int(p.name[4:24]) for p in segments(tmp_path)]
    _, got = open_log(tmp_path, skip_through=firsts[2] - 1)
    assert got == ents(firsts[2], 40)
    with pytest.raises(StorageCorruption, match="not contiguous"):
        open_log(tmp_path, skip_through=0)


def test_reset_discards_everything_and_restarts_at_the_given_index(tmp_path: Path) -> None:
    lg, _ = open_log(tmp_path, segment_bytes=200)
    lg.append(ents(1, 30))
    lg.sync()
    lg.reset(101)
    assert segments(tmp_path) == []
    with pytest.raises(ValueError):
        lg.append([ent(31)])
    lg.append(ents(101, 102))
    lg.sync()
    lg.close()
    _, got = open_log(tmp_path, skip_through=100)
    assert got == ents(101, 102)


def test_an_interrupted_reset_is_finished_on_open(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    write(log_dir, ents(1, 5))
    os.rename(log_dir, tmp_path / "log.discard")  # crash right after the atomic rename
    lg, got = open_log(log_dir, skip_through=7)
    assert got == [] and lg.next_index == 8
    assert not (tmp_path / "log.discard").exists()


# --------------------------------------------------------------------------- torn tails


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 12), cut=st.floats(0, 1, exclude_max=True), data_size=st.integers(0, 300))
def test_a_torn_last_record_is_truncated_with_a_warning(n: int, cut: float, data_size: int) -> None:
    """A crash mid-append leaves part of the last record: recovery drops exactly that record,
    warns naming the file and byte offset, and every earlier entry is intact."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        entries = [ent(i, size=data_size) for i in range(1, n + 1)]
        write(path, entries, segment_bytes=700)
        last = segments(path)[-1]
        size = last.stat().st_size
        rec_len = len(encode_record(entries[-1]))
        start = size - rec_len
        with open(last, "r+b") as f:
            f.truncate(start + int(cut * rec_len))
        with captured_warnings() as warned:
            lg, got = open_log(path, segment_bytes=700)
        assert got == entries[:-1]
        assert lg.next_index == n
        if int(cut * rec_len) > 0:
            (w,) = warned
            assert str(last) in w.getMessage() and f"byte offset {start}" in w.getMessage()
        assert last.stat().st_size == start  # durable repair: later appends start clean
        lg.append([ent(n, term=2)])
        lg.sync()
        lg.close()
        assert open_log(path)[1] == [*entries[:-1], ent(n, term=2)]


def test_a_crc_mismatch_in_the_last_record_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, ents(1, 5))
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    raw[-1] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, LOGGER):
        assert open_log(tmp_path)[1] == ents(1, 4)
    assert "record CRC mismatch" in caplog.text


def test_a_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    """After a crash a file can keep its new size but read back zeros where data never landed."""
    write(tmp_path, ents(1, 5))
    seg = segments(tmp_path)[0]
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    assert open_log(tmp_path)[1] == ents(1, 5)
    assert seg.stat().st_size == sum(len(encode_record(e)) for e in ents(1, 5))


def test_an_empty_last_segment_is_fine(tmp_path: Path) -> None:
    """A crash just after a rotation created the next segment, before any record reached it."""
    write(tmp_path, ents(1, 3))
    (tmp_path / segment_name(4)).touch()
    lg, got = open_log(tmp_path)
    assert got == ents(1, 3) and lg.next_index == 4
    lg.append([ent(4)])
    lg.sync()
    lg.close()
    assert open_log(tmp_path)[1] == ents(1, 4)


# --------------------------------------------------------------------------- corruption


def test_a_flipped_byte_in_the_middle_is_corruption(tmp_path: Path) -> None:
    """Damage before the tail would silently drop acknowledged entries if "repaired": refuse."""
    write(tmp_path, ents(1, 10), segment_bytes=1 << 20)
    seg = segments(tmp_path)[0]
    rec = len(encode_record(ent(1)))
    raw = bytearray(seg.read_bytes())
    raw[4 * rec + 12] ^= 0x01  # inside entry 5's payload
    seg.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruption) as exc:
        open_log(tmp_path)
    err = exc.value
    assert (err.path, err.offset, err.index) == (seg, 4 * rec, 5)
    msg = str(err)
    assert str(seg) in msg and f"byte offset {4 * rec}" in msg and "entry index 5" in msg
    assert "CRC" in msg and "catches up from the leader" in msg
    assert seg.read_bytes() == bytes(raw)  # nothing was "repaired"


def test_a_damaged_length_field_in_the_middle_is_corruption(tmp_path: Path) -> None:
    """A length that runs past the end of the file looks torn, but valid records follow it."""
    write(tmp_path, ents(1, 10), segment_bytes=1 << 20)
    seg = segments(tmp_path)[0]
    rec = len(encode_record(ent(1)))
    raw = bytearray(seg.read_bytes())
    raw[3 * rec] = 0x7F  # entry 4's length is now ~2 GiB
    seg.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruption, match=f"valid record follows at byte offset {4 * rec}"):
        open_log(tmp_path)


def test_a_bad_tail_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    """Segments are fsynced before their successor exists: only the last one can be torn."""
    write(tmp_path, ents(1, 20), segment_bytes=200)
    first = segments(tmp_path)[0]
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(size - 3)
    with pytest.raises(StorageCorruption) as exc:
        open_log(tmp_path)
    assert exc.value.path == first and "short record payload" in str(exc.value)


def test_a_non_contiguous_index_is_corruption(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    seg.write_bytes(b"".join(encode_record(e) for e in [ent(1), ent(2), ent(4)]))
    with pytest.raises(StorageCorruption, match="holds index 4, expected 3") as exc:
        open_log(tmp_path)
    assert exc.value.index == 3


def test_a_gap_between_segments_is_corruption(tmp_path: Path) -> None:
    write(tmp_path, ents(1, 20), segment_bytes=200)
    segments(tmp_path)[1].unlink()
    with pytest.raises(StorageCorruption, match="not contiguous"):
        open_log(tmp_path)


def test_terms_going_backwards_is_corruption(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(encode_record(ent(1, term=3)) + encode_record(ent(2, term=2)))
    with pytest.raises(StorageCorruption, match="term goes backwards"):
        open_log(tmp_path)
