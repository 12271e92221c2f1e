"""The in-memory Raft log: entries after the latest snapshot, plus bookkeeping for the driver.

Invariants:
    snapshot_index <= applied <= committed <= last_index        (RaftNode._check_log_indexes)
    persisted_index <= last_index; handed_index <= last_index   (ditto; and after ready(): ==)
    entries[k].index == snapshot_index + 1 + k                  (append, and at load)
    term and time_ms are non-decreasing along the log           (append, at each boundary; within
                                                                 each batch: the Ready checks)
"""

from __future__ import annotations

from raftstate.raft.messages import Entry, SnapshotMeta


class RaftLog:
    __slots__ = (
        "applied",
        "committed",
        "entries",
        "handed_index",
        "persisted_index",
        "snapshot_index",
        "snapshot_term",
        "snapshot_time_ms",
    )

    def __init__(self, snapshot: SnapshotMeta | None, entries: tuple[Entry, ...], committed: int) -> None:
        self.snapshot_index = snapshot.index if snapshot else 0
        self.snapshot_term = snapshot.term if snapshot else 0
        self.snapshot_time_ms = snapshot.time_ms if snapshot else 0
        self.entries: list[Entry] = list(entries)
        for k, e in enumerate(self.entries):
            if e.index != self.snapshot_index + 1 + k:
                raise ValueError(
                    f"stored log is not contiguous: expected index {self.snapshot_index + 1 + k}, "
                    f"found {e.index}"
                )
        #: entries up to here were handed to the driver in a Ready (to persist)
        self.handed_index = self.last_index
        #: entries up to here are known durable on this node
        self.persisted_index = self.last_index
        self.committed = max(self.snapshot_index, min(committed, self.last_index))
        #: entries up to here were handed to the driver to apply
        self.applied = self.snapshot_index

    # ----------------------------------------------------------------- queries

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    @property
    def last_time_ms(self) -> int:
        return self.entries[-1].time_ms if self.entries else self.snapshot_time_ms

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away (below the snapshot) or beyond the log."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        assert self.snapshot_index < index <= self.last_index, (index, self.snapshot_index, self.last_index)
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (must all be present)."""
        assert self.snapshot_index < lo, (lo, self.snapshot_index)
        assert hi <= self.last_index, (hi, self.last_index)
        base = self.snapshot_index + 1
        return self.entries[lo - base : hi - base + 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    def first_index_of_term_at(self, index: int) -> int:
        """First index (>= first_index) of the run of entries sharing the term at ``index``."""
        term = self.term_at(index)
        i = index
        while i - 1 > self.snapshot_index and self.term_at(i - 1) == term:
            i -= 1
        return i

    def last_index_of_term(self, term: int) -> int | None:
        """Last index in our log whose term is ``term``, or None."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                return None
        return self.snapshot_index if self.snapshot_term == term and self.snapshot_index else None

    # ----------------------------------------------------------------- changes

    def append(self, entries: list[Entry]) -> None:
        """Append entries that start right after our last index."""
        if entries:
            first = entries[0]
            assert first.index == self.last_index + 1, (
                f"appended entries continue the log: {first.index} after last index {self.last_index}"
            )
            assert first.term >= self.last_term and first.time_ms >= self.last_time_ms, (
                f"term and cluster time never decrease along the log: entry {first.index} "
                f"t{first.term}/{first.time_ms}ms after t{self.last_term}/{self.last_time_ms}ms"
            )
            self.entries.extend(entries)

    def truncate_after(self, index: int) -> None:
        """Drop every entry after ``index`` (a real conflict was found there)."""
        assert index >= self.committed, f"never truncate committed entries ({index} < {self.committed})"
        del self.entries[index - self.snapshot_index :]
        self.handed_index = min(self.handed_index, index)
        self.persisted_index = min(self.persisted_index, index)

    def maybe_append(self, prev_index: int, prev_term: int, entries: tuple[Entry, ...]) -> int | None:
        """AppendEntries consistency check and merge (§5.3).

        Returns the index of the last entry now known to match the leader (prev_index + len(entries)),
        or None if the check failed. Only a real term conflict truncates: entries we already hold
        are skipped, so a stale or duplicated append never removes anything.
        """
        if self.term_at(prev_index) != prev_term:
            if prev_index < self.snapshot_index:
                # Inside our snapshot: everything there is committed, so it matches. Skip what we cover.
                return self._merge_after_snapshot(prev_index, entries)
            return None
        return self._merge(entries, prev_index)

    def _merge_after_snapshot(self, prev_index: int, entries: tuple[Entry, ...]) -> int:
        # Everything up to snapshot_index is committed, hence identical to the leader's log.
        tail = tuple(e for e in entries if e.index > self.snapshot_index)
        if not tail:
            return self.snapshot_index
        return self._merge(tail, self.snapshot_index)

    def _merge(self, entries: tuple[Entry, ...], prev_index: int) -> int:
        for k, e in enumerate(entries):
            have = self.term_at(e.index)
            if have is None:
                self.append(list(entries[k:]))
                break
            if have != e.term:
                self.truncate_after(e.index - 1)
                self.append(list(entries[k:]))
                break
        return prev_index + len(entries)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index, f"commit {index} beyond last index {self.last_index}"
            self.committed = index
            return True
        return False

    def compact(self, index: int) -> None:
        """The application took a snapshot covering ``index`` (<= applied): drop entries up to it."""
        if index <= self.snapshot_index:
            return
        assert index <= self.applied, f"cannot compact past applied ({index} > {self.applied})"
        e = self.entry(index)
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term, self.snapshot_time_ms = e.index, e.term, e.time_ms

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.entries = []
        self.snapshot_index, self.snapshot_term, self.snapshot_time_ms = meta.index, meta.term, meta.time_ms
        self.committed = self.applied = self.handed_index = meta.index
        self.persisted_index = meta.index

    def unstable(self) -> tuple[Entry, ...]:
        """Entries not yet handed to the driver to persist; marks them handed."""
        if self.handed_index >= self.last_index:
            return ()
        out = tuple(self.slice(self.handed_index + 1, self.last_index))
        self.handed_index = self.last_index
        return out

    def to_apply(self) -> tuple[Entry, ...]:
        """Committed entries not yet handed to the driver to apply; marks them handed."""
        if self.applied >= self.committed:
            return ()
        out = tuple(self.slice(self.applied + 1, self.committed))
        self.applied = self.committed
        return out
