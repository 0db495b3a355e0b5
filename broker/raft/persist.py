"""The metadata quorum's disk: a write-ahead log of Raft entries and hard states, and one snapshot.

Directory `<data_dir>/__cluster_metadata/`:

    raft.wal     append-only records, each `[u32 body length][u32 CRC-32C of body][body]`, body
                 msgpack: `[0, term, index, kind, data]` (a log entry) or
                 `[1, term, voted_for or 0, commit]` (the hard state; the last one wins)
    snapshot     `[8-byte magic][u64 index][u64 term][u32 CRC-32C][data]`, replaced whole; the
                 CRC covers index, term and data (magic TLRAFTS2; a TLRAFTS1 snapshot, whose CRC
                 covers only the data, is still read)

One `persist(ready)` is one `write` and one `fsync`: the entries of a Ready and its hard state go
in the same append, entries first, so a stored commit never points past the stored log. (The
hard state lives in the WAL rather than in a file of its own replaced atomically: that would
cost a second fsync and a directory fsync on every vote and commit; here the last hard-state
record wins on replay, and compaction drops the old ones.) An entry
whose index is not past the last stored one replaces it and everything after it (that is how a
follower's conflicting suffix is cut without rewriting the file), exactly as on replay.

The WAL and the snapshot are replaced (never edited in place) by writing a temporary file,
fsyncing it, renaming it over the old one and fsyncing the directory: a crash leaves either the
old or the new file. That happens when a snapshot is saved (compaction, or one received from the
leader): the new WAL keeps only the entries after the snapshot, which bounds its size.

On start, `load()` replays the WAL, cuts a torn or corrupt tail (a crash mid-append: whatever it
held was never fsynced, so no message that depended on it was sent), and drops stored entries
that do not descend from the snapshot (a crash between saving a leader's snapshot and rewriting
the WAL). A snapshot that fails its CRC is refused: it was renamed into place whole, so a bad one
means a damaged disk, and starting from less state than we acknowledged would be worse.

Plain synchronous file code: the driver runs it inline or on its one I/O thread, never two calls
at once.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import crc32c
import msgpack

from broker.raft.messages import Entry, EntryKind
from broker.raft.state import HardState, PersistentState, Ready, Snapshot, SnapshotMeta

WAL_NAME = "raft.wal"
SNAPSHOT_NAME = "snapshot"
_FRAME = struct.Struct(">II")  # body length, CRC-32C of the body
_SNAPSHOT_MAGIC = b"TLRAFTS2"  # CRC-32C of index, term and data: a flipped index or term is refused
_SNAPSHOT_MAGIC_V1 = b"TLRAFTS1"  # CRC-32C of the data alone (read, never written)
_SNAPSHOT_HEADER = struct.Struct(">8sQQI")  # magic, index, term, CRC-32C
_SNAPSHOT_META = struct.Struct(">QQ")  # index, term: what the CRC covers before the data
_ENTRY, _HARD_STATE = 0, 1
# A record longer than this is not something we wrote (an entry is bounded by the frame size of
# the request that proposed it): the length field is garbage, so the tail is cut there.
RECORD_BYTES_MAX = 256 << 20


class RaftStorageError(RuntimeError):
    """The stored Raft state cannot be used (a damaged snapshot, a gap in the log)."""


class RaftStorage:
    """See the module docstring. `fsync=False` is for tests that do not care about power loss."""

    def __init__(self, directory: str | Path, *, fsync: bool = True):
        self.directory = Path(directory)
        self._fsync = fsync
        self._fd: int | None = None
        # A mirror of what is on disk, so a rewrite never has to read the file back.
        self._snapshot: Snapshot | None = None
        self._entries: list[Entry] = []
        self._hard_state = HardState()
        self.wal_bytes = 0
        self.tail_bytes_cut = 0  # how much torn tail the last load() removed

    # ---- start -------------------------------------------------------------------------------

    def load(self) -> PersistentState:
        """Read the snapshot and the WAL (cutting a torn tail); open the WAL for appending."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._snapshot = self._read_snapshot()
        wal = self.directory / WAL_NAME
        created = not wal.exists()
        self._fd = os.open(wal, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            self._sync_dir()
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        records, good_bytes = _parse_records(data)
        self.tail_bytes_cut = len(data) - good_bytes
        if self.tail_bytes_cut:
            os.ftruncate(self._fd, good_bytes)  # the torn tail was never acknowledged to anyone
            self._sync(self._fd)
        self.wal_bytes = good_bytes
        first, entries, hard_state = _replay(records)
        self._entries = _after_snapshot(first, entries, self._snapshot)
        last_index = self._last_index()
        if hard_state.commit > last_index:  # only if entries were dropped as not descending
            hard_state = HardState(hard_state.term, hard_state.voted_for, last_index)
        self._hard_state = hard_state
        return PersistentState(hard_state, self._snapshot, tuple(self._entries))

    def _read_snapshot(self) -> Snapshot | None:
        path = self.directory / SNAPSHOT_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < _SNAPSHOT_HEADER.size:
            raise RaftStorageError(f"{path}: snapshot shorter than its header")
        magic, index, term, crc = _SNAPSHOT_HEADER.unpack_from(data)
        body = data[_SNAPSHOT_HEADER.size:]
        if magic == _SNAPSHOT_MAGIC:
            valid = _snapshot_crc(index, term, body) == crc
        else:
            valid = magic == _SNAPSHOT_MAGIC_V1 and crc32c.crc32c(body) == crc
        if not valid:
            raise RaftStorageError(f"{path}: snapshot fails its magic/CRC check (damaged disk?)")
        return Snapshot(SnapshotMeta(index, term), body)

    # ---- the Ready contract --------------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Step 1 of the Ready contract: snapshot, entries, hard state, one fsync. Returns once
        everything is durable; only then may the caller send the Ready's messages."""
        assert self._fd is not None, "load() first"
        rewrite = False
        if ready.snapshot is not None:
            self._write_snapshot(ready.snapshot)
            self._entries = []  # the snapshot replaces every stored entry
            rewrite = True
        if ready.truncate_from is not None:
            del self._entries[max(0, ready.truncate_from - self._first_index()):]
        if ready.entries:
            assert ready.entries[0].index == self._last_index() + 1, "Ready entries extend the stored log"
            self._entries.extend(ready.entries)
        if ready.hard_state is not None:
            self._hard_state = ready.hard_state
        if rewrite:
            self._rewrite_wal()
            return
        chunks = [_frame(_entry_body(entry)) for entry in ready.entries]
        if ready.hard_state is not None:
            chunks.append(_frame(_hard_state_body(ready.hard_state)))  # after the entries: see the module docstring
        if chunks:
            data = b"".join(chunks)
            _write_all(self._fd, data)
            self._sync(self._fd)
            self.wal_bytes += len(data)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Compaction: store the application's snapshot up to `meta.index` (durably, replacing
        the previous one), then drop the stored entries it covers."""
        assert self._fd is not None, "load() first"
        if self._snapshot is not None and meta.index <= self._snapshot.meta.index:
            return
        assert meta.index <= self._last_index(), "only stored entries are compacted"
        covered = meta.index - self._first_index() + 1  # counted from the old snapshot
        self._write_snapshot(Snapshot(meta, data))
        del self._entries[:covered]
        self._rewrite_wal()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- views for status and tests ---------------------------------------------------------

    def state(self) -> PersistentState:
        """What is on disk now, as load() would return it (from the in-memory mirror)."""
        return PersistentState(self._hard_state, self._snapshot, tuple(self._entries))

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        return self._snapshot.meta if self._snapshot is not None else SnapshotMeta()

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def last_index(self) -> int:
        return self._last_index()

    # ---- files ----------------------------------------------------------------------------------

    def _first_index(self) -> int:
        return self.snapshot_meta.index + 1

    def _last_index(self) -> int:
        return self.snapshot_meta.index + len(self._entries)

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        header = _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, meta.index, meta.term,
                                       _snapshot_crc(meta.index, meta.term, snapshot.data))
        self._replace_file(SNAPSHOT_NAME, header + snapshot.data)
        self._snapshot = snapshot

    def _rewrite_wal(self) -> None:
        chunks = [_frame(_entry_body(entry)) for entry in self._entries]
        chunks.append(_frame(_hard_state_body(self._hard_state)))
        data = b"".join(chunks)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._replace_file(WAL_NAME, data)
        self._fd = os.open(self.directory / WAL_NAME, os.O_RDWR | os.O_APPEND)
        self.wal_bytes = len(data)

    def _replace_file(self, name: str, data: bytes) -> None:
        """Write temp, fsync, rename over `name`, fsync the directory: old or new, never half."""
        temp = self.directory / (name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            self._sync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.directory / name)
        self._sync_dir()

    def _sync(self, fd: int) -> None:
        if self._fsync:
            os.fsync(fd)

    def _sync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- encoding -------------------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return _FRAME.pack(len(body), crc32c.crc32c(body)) + body


def _snapshot_crc(index: int, term: int, data: bytes) -> int:
    return crc32c.crc32c(data, crc32c.crc32c(_SNAPSHOT_META.pack(index, term)))


def _entry_body(entry: Entry) -> bytes:
    return msgpack.packb([_ENTRY, entry.term, entry.index, int(entry.kind), entry.data], use_bin_type=True)


def _hard_state_body(hard_state: HardState) -> bytes:
    return msgpack.packb([_HARD_STATE, hard_state.term, hard_state.voted_for or 0, hard_state.commit])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parse_records(data: bytes) -> tuple[list[Any], int]:
    """Decoded records up to the first torn or corrupt one, and the byte length they span."""
    records: list[Any] = []
    position = 0
    while position + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, position)
        start = position + _FRAME.size
        body = data[start:start + length]
        if length > RECORD_BYTES_MAX or len(body) != length or crc32c.crc32c(body) != crc:
            break
        try:
            record = msgpack.unpackb(body, raw=False)
        except ValueError:
            break
        if not _well_formed(record):
            break
        records.append(record)
        position = start + length
    return records, position


def _well_formed(record: Any) -> bool:
    if not isinstance(record, list) or not record or type(record[0]) is not int:
        return False
    if record[0] == _ENTRY:
        return (len(record) == 5 and all(type(v) is int and v >= 0 for v in record[1:4])
                and record[3] in EntryKind._value2member_map_ and isinstance(record[4], bytes))
    if record[0] == _HARD_STATE:
        return len(record) == 4 and all(type(v) is int and v >= 0 for v in record[1:])
    return False


def _replay(records: list[Any]) -> tuple[int, list[Entry], HardState]:
    """The WAL's entries (later records replacing earlier ones at the same index and after) with
    the index of the first, and the last hard state."""
    first = 0
    entries: list[Entry] = []
    hard_state = HardState()
    for record in records:
        if record[0] == _HARD_STATE:
            _, term, vote, commit = record
            hard_state = HardState(term, vote or None, commit)
            continue
        _, term, index, kind, data = record
        entry = Entry(term, index, EntryKind(kind), data)
        if not entries or index < first:
            first, entries = index, [entry]
            continue
        last = first + len(entries) - 1
        if index > last + 1:
            raise RaftStorageError(f"the Raft WAL jumps from index {last} to {index}")
        del entries[index - first:]
        entries.append(entry)
    return first, entries, hard_state


def _after_snapshot(first: int, entries: list[Entry], snapshot: Snapshot | None) -> list[Entry]:
    """The stored entries that extend the snapshot (all of them without one)."""
    base_index = snapshot.meta.index if snapshot is not None else 0
    base_term = snapshot.meta.term if snapshot is not None else 0
    if not entries:
        return []
    last = first + len(entries) - 1
    if first > base_index + 1:
        raise RaftStorageError(f"the Raft WAL starts at index {first}, after the snapshot at {base_index}")
    if last <= base_index:
        return []  # a snapshot from the leader replaced a shorter log
    if first <= base_index:
        if entries[base_index - first].term != base_term:
            return []  # entries from before a leader's snapshot replaced them (crash before the WAL rewrite)
        return entries[base_index - first + 1:]
    return entries
