"""The leader-epoch cache of one partition: for each leader epoch in the log, the offset where it
starts (Kafka's KIP-101 fix). A follower back from a failover asks the leader where its own last
epoch ended and truncates its divergent suffix there, instead of at its high watermark.

File: `leader-epoch-checkpoint` in the partition directory, text, rewritten atomically (temp,
fsync, rename, fsync dir) only when the entries change: a new epoch starts, or a truncation or
retention moves its ends. Both are rare, so appends within an epoch never touch it.

    tidelog-leader-epoch-checkpoint 1
    <entry count>
    <epoch> <start offset>      one line per entry, epochs and start offsets strictly increasing

Decisions
- The log is the truth; this file is a disposable index of it. `reconcile` (called on open)
  trims entries past the log's ends and, when the file is missing, garbled or disagrees with the
  batches, rebuilds the entries from the batch headers.
- The in-memory entries change first, then the file is written: if the write fails the cache
  still matches the log, the error propagates, and the next open repairs the stale file.
- A new epoch starting at the same offset as the latest entry replaces it (that epoch holds no
  batch), as Kafka does; a lower epoch or a start offset going backwards is refused.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from .checkpoint import OFFSET_MAX
from .errors import OffsetMismatchError, StaleLeaderEpochError, StorageError
from .files import write_file_atomically

EPOCH_CHECKPOINT_FILE = "leader-epoch-checkpoint"
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
EPOCH_MAX = 2**31 - 1  # leader_epoch is an int32 in the batch header
_MAGIC_LINE = "tidelog-leader-epoch-checkpoint 1"


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


class LeaderEpochCache:
    """Entries (epoch, start_offset), both strictly increasing. `path` None keeps it in memory."""

    def __init__(self, path: Path | None, entries: Iterable[EpochEntry] = ()):
        self.path = path
        self._entries: list[EpochEntry] = []
        self._epochs: list[int] = []  # parallel to _entries, for bisect
        self._replace(list(entries))
        _check_entries(self._entries, str(path))

    @classmethod
    def load(cls, directory: Path) -> tuple[LeaderEpochCache, bool]:
        """(cache, loaded): loaded is False when the file was missing or unreadable (empty cache)."""
        path = Path(directory) / EPOCH_CHECKPOINT_FILE
        entries = read_epoch_checkpoint(path)
        return cls(path, entries or ()), entries is not None

    # -- reads ----------------------------------------------------------------------------------

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        """The newest epoch, UNDEFINED_EPOCH (-1) when empty."""
        return self._epochs[-1] if self._epochs else UNDEFINED_EPOCH

    @property
    def earliest_entry(self) -> EpochEntry | None:
        return self._entries[0] if self._entries else None

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """OffsetsForLeaderEpoch: (the largest cached epoch <= `epoch`, the start offset of the
        next higher cached epoch, or log_end_offset if there is none). (-1, -1) when `epoch` is
        below every cached epoch (or undefined) or the cache is empty: the caller cannot tell
        where its log diverges and falls back to its high watermark."""
        floor = bisect_right(self._epochs, epoch) - 1
        if epoch < 0 or floor < 0:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        found = self._entries[floor].epoch
        if floor + 1 < len(self._entries):
            return found, self._entries[floor + 1].start_offset
        return found, log_end_offset

    # -- changes --------------------------------------------------------------------------------

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset`. The latest epoch again is ignored; True
        when the entries (and the file) changed."""
        latest = self._entries[-1] if self._entries else None
        if latest is not None:
            if epoch == latest.epoch:
                return False
            if epoch < latest.epoch:
                raise StaleLeaderEpochError(
                    f"{self.path}: epoch {epoch} is below the latest cached epoch {latest.epoch}")
            if start_offset < latest.start_offset:
                raise OffsetMismatchError(
                    f"{self.path}: epoch {epoch} would start at {start_offset}, before epoch "
                    f"{latest.epoch} which starts at {latest.start_offset}")
        if not 0 <= epoch <= EPOCH_MAX or not 0 <= start_offset <= OFFSET_MAX:
            raise ValueError(f"{self.path}: epoch {epoch} at offset {start_offset} is out of range")
        entries = list(self._entries)
        if latest is not None and latest.start_offset == start_offset:
            entries.pop()  # the previous epoch holds no batch
        entries.append(EpochEntry(epoch, start_offset))
        self._update(entries)
        return True

    def truncate_from_end(self, end_offset: int) -> bool:
        """After the log was cut to `end_offset`: drop entries starting at or after it."""
        keep = bisect_left([e.start_offset for e in self._entries], end_offset)
        if keep == len(self._entries):
            return False
        self._update(self._entries[:keep])
        return True

    def truncate_from_start(self, start_offset: int) -> bool:
        """After retention moved the log start to `start_offset`: drop the epochs wholly below it
        and move the start of the epoch holding it up to `start_offset`."""
        holding = bisect_right([e.start_offset for e in self._entries], start_offset) - 1
        if holding < 0 or self._entries[holding].start_offset == start_offset and holding == 0:
            return False
        entries = self._entries[holding:]
        entries[0] = EpochEntry(entries[0].epoch, start_offset)
        self._update(entries)
        return True

    def clear_and_flush(self) -> None:
        """Drop every entry and write the empty file (the log was emptied)."""
        self._update([], force=True)

    def replace_and_flush(self, entries: list[EpochEntry]) -> None:
        """Install entries rebuilt from the log (see reconcile)."""
        _check_entries(entries, str(self.path))
        self._update(entries, force=True)

    def _update(self, entries: list[EpochEntry], force: bool = False) -> None:
        if entries == self._entries and not force:
            return
        self._replace(entries)
        if self.path is not None:
            write_file_atomically(self.path, encode_entries(entries))

    def _replace(self, entries: list[EpochEntry]) -> None:
        self._entries = entries
        self._epochs = [e.epoch for e in entries]

    def __repr__(self) -> str:
        return f"LeaderEpochCache({self.path}, {self._entries})"


def _check_entries(entries: list[EpochEntry], where: str) -> None:
    for before, after in zip(entries, entries[1:]):
        if after.epoch <= before.epoch or after.start_offset <= before.start_offset:
            raise ValueError(f"{where}: epoch entries must strictly increase: {before} then {after}")


# -- the file -------------------------------------------------------------------------------------

def encode_entries(entries: list[EpochEntry]) -> bytes:
    lines = [_MAGIC_LINE, str(len(entries))] + [f"{e.epoch} {e.start_offset}" for e in entries]
    return ("\n".join(lines) + "\n").encode()


def decode_entries(text: str) -> list[EpochEntry] | None:
    """None for anything unexpected (the caller rebuilds from the log)."""
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != _MAGIC_LINE or lines[-1] != "":
        return None
    try:
        count = int(lines[1])
        if count != len(lines) - 3:
            return None
        entries = []
        for line in lines[2:-1]:
            epoch_text, offset_text = line.split(" ")
            entries.append(EpochEntry(int(epoch_text), int(offset_text)))
    except ValueError:
        return None
    if not all(0 <= e.epoch <= EPOCH_MAX and 0 <= e.start_offset <= OFFSET_MAX for e in entries):
        return None
    try:
        _check_entries(entries, "")
    except ValueError:
        return None
    return entries


def read_epoch_checkpoint(path: Path) -> list[EpochEntry] | None:
    try:
        return decode_entries(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None


# -- agreement with the log -----------------------------------------------------------------------

def entries_from_batches(batches: Iterable[tuple[int, int]]) -> list[EpochEntry]:
    """Entries for a log given its (base_offset, leader_epoch) per batch, in order."""
    entries: list[EpochEntry] = []
    for base_offset, epoch in batches:
        if not entries or epoch > entries[-1].epoch:
            entries.append(EpochEntry(epoch, base_offset))
    return entries


def disagreement(entries: list[EpochEntry], log_start_offset: int, log_end_offset: int,
                 last_epoch: int | None, batch_at: Callable[[int], tuple[int, int]]) -> str | None:
    """Why `entries` (already trimmed to the log's ends) do not describe the log, or None.

    `batch_at(offset)` gives (base_offset, epoch) of the batch holding `offset`. Two header reads
    per entry prove the entries complete, because epochs never decrease along a log: every batch
    from an entry's start up to the next entry's start minus one carries the entry's epoch."""
    if log_start_offset == log_end_offset:
        return None if not entries else "entries for an empty log"
    if not entries:
        return "no entries for a non-empty log"
    if entries[0].start_offset != log_start_offset:
        return f"first entry starts at {entries[0].start_offset}, the log at {log_start_offset}"
    if entries[-1].epoch != last_epoch:
        return f"latest epoch {entries[-1].epoch}, the log's last batch has epoch {last_epoch}"
    for i, entry in enumerate(entries):
        base, epoch = batch_at(entry.start_offset)
        if epoch != entry.epoch or (base != entry.start_offset and i > 0):
            return f"epoch {entry.epoch} at {entry.start_offset}: the batch there is {base} of epoch {epoch}"
        if i > 0 and batch_at(entry.start_offset - 1)[1] != entries[i - 1].epoch:
            return f"the batch before offset {entry.start_offset} is not of epoch {entries[i - 1].epoch}"
    return None


def reconcile(cache: LeaderEpochCache, loaded: bool, log_start_offset: int, log_end_offset: int,
              last_epoch: int | None, batch_at: Callable[[int], tuple[int, int]],
              scan: Callable[[], Iterable[tuple[int, int]]]) -> str | None:
    """Make the cache describe the log after open: trim it to the log's ends, then rebuild it from
    `scan()` (header reads) if it was not loaded or still disagrees. Returns why it was rebuilt."""
    reason = None if loaded else "leader-epoch-checkpoint missing or unreadable"
    if reason is None:
        cache.truncate_from_end(log_end_offset)
        cache.truncate_from_start(log_start_offset)
        try:
            reason = disagreement(cache.entries, log_start_offset, log_end_offset, last_epoch, batch_at)
        except StorageError as exc:
            reason = f"cannot check it against the log: {exc}"
    if reason is not None:
        cache.replace_and_flush(entries_from_batches(scan()))
    return reason
