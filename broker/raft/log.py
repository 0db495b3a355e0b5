"""The in-memory view of one node's Raft log: a snapshot offset followed by entries.

Besides the entries it tracks four positions, always ordered
`snapshot_index <= applied <= applying <= commit` and `commit <= last_index`:

- `commit`: highest index known committed (never decreases);
- `stable_index`: highest index the driver has confirmed persisted (via advance);
- `applying` / `applied`: highest index handed to / confirmed applied by the application.

Terms along a log never decrease, which lets term lookups bisect instead of scan.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from broker.raft.messages import Entry
from broker.raft.state import SnapshotMeta


class StorageStateError(ValueError):
    """The persisted state handed to RaftNode is inconsistent (not contiguous, bad commit)."""


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry], commit: int) -> None:
        _check_contiguous(snapshot, entries)
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term
        self._entries: list[Entry] = list(entries)
        if not snapshot.index <= commit <= self.last_index:
            # A snapshot is committed by definition; a stored commit past the stored log means
            # the hard state was written before the entries it covers.
            if commit < snapshot.index:
                commit = snapshot.index
            else:
                raise StorageStateError(f"stored commit {commit} is past the stored log end {self.last_index}")
        self.commit = commit
        self.stable_index = self.last_index  # everything we were given came from disk
        self.written_index = self.last_index  # highest index the driver may have on disk
        self.applied = self.applying = snapshot.index

    # ---- reading -------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None if compacted away or not there yet."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self._entries[index - self.first_index].term

    def entry(self, index: int) -> Entry:
        assert self.first_index <= index <= self.last_index, "entry() only reads entries still in the log"
        return self._entries[index - self.first_index]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None, max_count: int | None = None) -> list[Entry]:
        """Entries [lo, hi], cut at max_count entries or max_bytes of data, but never empty
        when lo <= hi: one oversized entry must still be able to travel."""
        if lo > hi:
            return []
        assert lo >= self.first_index and hi <= self.last_index, "slice() only reads entries still in the log"
        out: list[Entry] = []
        size_bytes = 0
        for entry in self._entries[lo - self.first_index:hi - self.first_index + 1]:
            size_bytes += len(entry.data)
            if out and ((max_bytes is not None and size_bytes > max_bytes)
                        or (max_count is not None and len(out) >= max_count)):
                break
            out.append(entry)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's voting rule (§5.4.1): a candidate whose log ends in a later term, or the same
        term and at least as far, holds every committed entry we hold."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """First index of the run of entries sharing the term of `index`, not below commit+1
        (committed entries never conflict, so the leader need not go back further)."""
        term = self.term_at(index)
        floor = max(self.commit + 1, self.first_index)
        pos = bisect_left(self._entries, term, key=lambda e: e.term)
        return max(floor, self.first_index + pos)

    def last_index_of_term(self, term: int) -> int | None:
        """Last index holding `term` among the entries still in the log, if any."""
        pos = bisect_right(self._entries, term, key=lambda e: e.term)
        if pos and self._entries[pos - 1].term == term:
            return self.first_index + pos - 1
        return None

    def unstable_entries(self) -> list[Entry]:
        return self._entries[self.stable_index - self.snapshot_index:]

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Entries committed AND persisted but not yet handed to the application."""
        hi = min(self.commit, self.stable_index)
        return self.slice(self.applying + 1, hi, max_bytes=max_bytes)

    # ---- changing ------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader path: entries extend the log exactly."""
        if entries:
            assert entries[0].index == self.last_index + 1, "a leader only appends at its log end"
            self._entries.extend(entries)

    def try_append(self, prev_index: int, prev_term: int, leader_commit: int, entries: Sequence[Entry]) -> int | None:
        """Follower path. If our log holds (prev_index, prev_term), merge `entries` and return
        the last index now known to match the leader; else None.

        Only a real conflict truncates: entries we already hold are kept, so a duplicated or
        reordered older append can never cut off entries a newer append gave us.
        """
        if self.term_at(prev_index) != prev_term:
            return None
        last_new = prev_index + len(entries)
        for entry in entries:
            if self.term_at(entry.index) != entry.term:
                self._replace_suffix([e for e in entries if e.index >= entry.index])
                break
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def _replace_suffix(self, entries: Sequence[Entry]) -> None:
        start = entries[0].index
        assert start > self.commit, (
            f"a follower never truncates committed entries (truncating at {start}, commit {self.commit})")
        del self._entries[start - self.first_index:]
        self._entries.extend(entries)
        self.stable_index = min(self.stable_index, start - 1)

    def commit_to(self, index: int) -> bool:
        if index <= self.commit:
            return False
        assert index <= self.last_index, f"commit {index} past the log end {self.last_index}"
        self.commit = index
        return True

    def stable_to(self, persisted: Sequence[Entry]) -> None:
        """The driver persisted `persisted` (one Ready's entries). If a conflicting append
        replaced part of them meanwhile, only the prefix still in our log counts: an entry whose
        term still matches is, by Log Matching, the same entry with the same history."""
        for entry in reversed(persisted):
            if entry.index <= self.stable_index:
                return
            if self.term_at(entry.index) == entry.term:
                self.stable_index = entry.index
                return

    def applied_to(self, index: int) -> None:
        assert index <= self.commit, "the application never applies an uncommitted entry"
        self.applied = max(self.applied, index)
        self.applying = max(self.applying, self.applied)

    def compact(self, index: int) -> SnapshotMeta:
        """Drop entries up to `index`, which the application has snapshotted."""
        assert self.snapshot_index < index <= self.applied, "only applied entries are compacted"
        assert index <= self.stable_index, "only persisted entries are compacted"
        term = self.term_at(index)
        assert term is not None
        del self._entries[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term
        return SnapshotMeta(index, term)

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log with a leader's snapshot (which is committed by definition)."""
        assert snapshot.index > self.commit, "a snapshot at or below commit is never restored"
        self._entries = []
        self.snapshot_index, self.snapshot_term = snapshot.index, snapshot.term
        self.commit = self.stable_index = self.written_index = snapshot.index
        self.applying = snapshot.index  # the snapshot itself is handed to the application


def _check_contiguous(snapshot: SnapshotMeta, entries: Sequence[Entry]) -> None:
    expected, floor_term = snapshot.index + 1, snapshot.term
    for entry in entries:
        if entry.index != expected or entry.term < floor_term:
            raise StorageStateError(
                f"stored entry ({entry.term}, {entry.index}) breaks the log after index {expected - 1}")
        expected, floor_term = expected + 1, entry.term
