"""RaftStorage.load (broker/raft/persist.py) of a damaged metadata quorum disk.

A history of Readies (appends, a follower's conflicting suffix, hard states alone, compactions)
is written through the module's API; then the WAL or the snapshot is damaged and the directory
reloaded. For WAL damage nothing may escape (a torn or corrupt tail is cut), what loads is the
state after some prefix of the WAL's records (entries contiguous after the snapshot, the hard
state one that was written, the snapshot untouched), the cut is durable and appends continue
after it. For snapshot damage only RaftStorageError may escape, and a snapshot that loads is the
one written.

Not fuzzed: excising whole records from the middle of the WAL. That is not a crash mode (a crash
tears the tail), and it yields a well-formed WAL of different content rather than a damaged one.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import crc32c
import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.raft.messages import Entry, EntryKind
from broker.raft.persist import SNAPSHOT_NAME, WAL_NAME, RaftStorage, RaftStorageError
from broker.raft.state import HardState, PersistentState, Ready, SnapshotMeta
from tests.fuzz.conftest import fuzz_settings, fuzz_timeout

pytestmark = pytest.mark.timeout(fuzz_timeout(120))

_FRAME = struct.Struct(">II")

_op = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 4), st.booleans(), st.booleans()),  # count, new term, with hard state
    st.tuples(st.just("conflict"), st.integers(0, 6), st.integers(1, 3), st.booleans()),  # back, count, with hard state
    st.tuples(st.just("hard"), st.integers(0, 5), st.integers(0, 6)),  # vote, commit back
    st.tuples(st.just("compact"), st.integers(0, 6), st.binary(max_size=16)),  # back, snapshot data
)
_ops = st.lists(_op, max_size=8)


class _Model:
    """What was written, as the WAL's logical records since its last rewrite, and the snapshot."""

    def __init__(self):
        self.term = 1
        self.entries: list[Entry] = []  # the stored log after the snapshot
        self.hard_state = HardState()
        self.snapshot_meta = SnapshotMeta()
        self.snapshot_data: bytes | None = None
        self.wal: list[Entry | HardState] = []  # on disk, in order

    @property
    def last(self) -> int:
        return self.snapshot_meta.index + len(self.entries)

    def entry(self, index: int, data: bytes) -> Entry:
        return Entry(self.term, index, EntryKind.NOOP if index % 5 == 0 else EntryKind.NORMAL, data)

    def hard(self, vote: int | None, commit_back: int) -> HardState:
        return HardState(self.term, vote, max(0, self.last - commit_back))

    def candidates(self) -> list[tuple[HardState, tuple[Entry, ...]]]:
        """(hard state, entries) after each prefix of the WAL, as load() must return them."""
        result = []
        for cut in range(len(self.wal) + 1):
            log: dict[int, Entry] = {}
            hard_state = HardState()
            for record in self.wal[:cut]:
                if isinstance(record, HardState):
                    hard_state = record
                    continue
                for index in [i for i in log if i >= record.index]:
                    del log[index]
                log[record.index] = record
            kept = tuple(log[i] for i in sorted(log) if i > self.snapshot_meta.index)
            last = self.snapshot_meta.index + len(kept)
            if hard_state.commit > last:
                hard_state = HardState(hard_state.term, hard_state.voted_for, last)
            result.append((hard_state, kept))
        return result


def _write_history(directory: Path, ops) -> _Model:
    model = _Model()
    storage = RaftStorage(directory, fsync=False)
    storage.load()
    try:
        for n, op in enumerate(ops):
            data = b"r%d" % n
            if op[0] == "append":
                _, count, new_term, with_hard = op
                model.term += new_term
                new = [model.entry(model.last + 1 + i, data) for i in range(count)]
                model.entries += new
                hard = model.hard(None, 0) if with_hard else None
                storage.persist(Ready(hard_state=hard, entries=tuple(new)))
            elif op[0] == "conflict":
                _, back, count, with_hard = op
                start = max(model.snapshot_meta.index + 1, model.last + 1 - back)
                model.term += 1
                del model.entries[start - model.snapshot_meta.index - 1:]
                new = [model.entry(start + i, data) for i in range(count)]
                model.entries += new
                hard = model.hard(None, count) if with_hard else None
                storage.persist(Ready(hard_state=hard, truncate_from=start, entries=tuple(new)))
            elif op[0] == "hard":
                _, vote, commit_back = op
                hard = model.hard(vote or None, commit_back)
                storage.persist(Ready(hard_state=hard))
            else:
                _, back, snapshot_data = op
                index = model.last - back
                if index <= model.snapshot_meta.index:
                    continue  # nothing new to compact: save_snapshot would ignore it
                term = model.entries[index - model.snapshot_meta.index - 1].term
                storage.save_snapshot(SnapshotMeta(index, term), snapshot_data)
                del model.entries[:index - model.snapshot_meta.index]
                model.snapshot_meta, model.snapshot_data = SnapshotMeta(index, term), snapshot_data
                model.wal = list(model.entries) + [model.hard_state]  # the rewritten WAL
                continue
            if op[0] != "compact":
                if hard is not None:
                    model.hard_state = hard
                model.wal += new if op[0] != "hard" else []
                model.wal += [hard] if hard is not None else []
        assert storage.state().entries == tuple(model.entries)  # the model agrees with the mirror
        assert storage.state().hard_state == model.hard_state
    finally:
        storage.close()
    return model


def _mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(("flip", "overwrite", "truncate", "zeros", "append", "insert")), label="kind")
    at = draw(st.integers(0, max(0, len(data) - 1)), label="at")
    junk = draw(st.binary(min_size=1, max_size=24), label="junk")
    if kind == "flip" and data:
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255), label="mask")]) + data[at + 1:]
    if kind == "overwrite":
        return data[:at] + junk + data[at + len(junk):]
    if kind == "truncate":
        return data[:at]
    if kind == "zeros":  # a crash after the size grew but before the data blocks were written
        return data + b"\x00" * draw(st.integers(1, 64), label="zeros")
    if kind == "insert":
        return data[:at] + junk + data[at:]
    return data + junk


def _load(directory: Path) -> tuple[RaftStorage, PersistentState]:
    storage = RaftStorage(directory, fsync=False)
    try:
        return storage, storage.load()
    except BaseException:
        storage.close()
        raise


def _check_prefix_and_continue(directory: Path, model: _Model, damaged_size: int) -> None:
    storage, state = _load(directory)
    try:
        assert (state.hard_state, state.entries) in model.candidates()
        assert (state.snapshot.meta if state.snapshot else SnapshotMeta()) == model.snapshot_meta
        assert (state.snapshot.data if state.snapshot else None) == model.snapshot_data
        assert state == storage.state()
        wal_size = (directory / WAL_NAME).stat().st_size
        assert wal_size == storage.wal_bytes == damaged_size - storage.tail_bytes_cut
    finally:
        storage.close()

    # The cut is durable and idempotent, and appends continue after the loaded prefix.
    storage, again = _load(directory)
    try:
        assert again == state and storage.tail_bytes_cut == 0
        last = model.snapshot_meta.index + len(state.entries)
        term = max(state.hard_state.term, model.term) + 1
        after = Entry(term, last + 1, EntryKind.NORMAL, b"after")
        storage.persist(Ready(hard_state=HardState(term, 3, last), entries=(after,)))
    finally:
        storage.close()
    storage, final = _load(directory)
    try:
        assert final.entries == state.entries + (after,)
        assert final.hard_state == HardState(term, 3, last) and final.snapshot == state.snapshot
    finally:
        storage.close()


@fuzz_settings(0.25)
@given(ops=_ops, data=st.data())
def test_damaged_raft_wal_loads_a_prefix_and_appends_continue(ops, data):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        model = _write_history(directory, ops)
        damaged = (directory / WAL_NAME).read_bytes()
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            damaged = _mutate(damaged, data.draw)
        (directory / WAL_NAME).write_bytes(damaged)
        _check_prefix_and_continue(directory, model, len(damaged))


def _is_a_record(body: bytes) -> bool:
    """Does `body` decode to a record of the documented WAL format? (Such a frame may legitimately
    be kept; this test wants bodies that must be cut.)"""
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception:
        return False
    if not isinstance(value, list) or not value:
        return False
    naturals = lambda values: all(type(v) is int and v >= 0 for v in values)  # noqa: E731
    if value[0] == 0 and type(value[0]) is int and len(value) == 5:
        return naturals(value[1:4]) and value[3] in (0, 1) and isinstance(value[4], bytes)
    if value[0] == 1 and type(value[0]) is int and len(value) == 4:
        return naturals(value[1:])
    return False


_near_records = st.one_of(
    st.tuples(st.just(0), st.integers(-3, 3), st.integers(-3, 3), st.integers(-1, 3), st.binary(max_size=4)),
    st.tuples(st.just(0), st.integers(0, 3), st.integers(0, 3), st.sampled_from([2, 9, 255]), st.binary(max_size=4)),
    st.tuples(st.just(0), st.integers(0, 3), st.integers(1, 3), st.just(0), st.text(max_size=4)),  # data not bytes
    st.tuples(st.just(0), st.floats(0, 3) | st.booleans() | st.none(), st.integers(1, 3), st.just(0), st.binary(max_size=4)),
    st.tuples(st.just(1), st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, -1)),
    st.tuples(st.just(1), st.integers(0, 3), st.text(max_size=3) | st.none(), st.integers(0, 3)),
    st.tuples(st.sampled_from([2, -1, "0", None]), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    st.lists(st.integers(0, 3), max_size=7).filter(lambda v: len(v) not in (4, 5)).map(lambda v: [0, *v][:len(v)]),
).map(lambda v: msgpack.packb(list(v), use_bin_type=True))
_value = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10) | st.binary(max_size=10)
_foreign_bodies = st.binary(max_size=24) | _value.map(msgpack.packb) | _near_records


def _frame_spans(data: bytes) -> list[int]:
    """Byte offsets of every frame boundary of an intact WAL (0 and the end included)."""
    spans, position = [0], 0
    while position < len(data):
        length, _ = _FRAME.unpack_from(data, position)
        position += _FRAME.size + length
        spans.append(position)
    return spans


@fuzz_settings(0.25)
@given(ops=_ops, body=_foreign_bodies, where=st.integers(0, 40))
def test_crc_valid_frames_with_foreign_bodies_are_cut(ops, body, where):
    """A frame whose CRC matches (a zero-filled tail, a bug, a CRC collision) but whose body is not
    a record: load cuts the WAL there, so what loads is exactly the records before it."""
    assume(not _is_a_record(body))
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        model = _write_history(directory, ops)
        wal = (directory / WAL_NAME).read_bytes()
        spans = _frame_spans(wal)
        cut = min(where, len(spans) - 1)
        damaged = wal[:spans[cut]] + _FRAME.pack(len(body), crc32c.crc32c(body)) + body + wal[spans[cut]:]
        (directory / WAL_NAME).write_bytes(damaged)
        storage, state = _load(directory)
        try:
            assert (state.hard_state, state.entries) == model.candidates()[cut]
            assert storage.tail_bytes_cut == len(damaged) - spans[cut]
        finally:
            storage.close()
        _check_prefix_and_continue(directory, model, spans[cut])


@fuzz_settings(0.25)
@given(ops=_ops.filter(lambda ops: any(op[0] == "compact" for op in ops)), data=st.data())
def test_garbled_snapshot_is_refused_or_loads_as_written(ops, data):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        model = _write_history(directory, ops)
        assume(model.snapshot_data is not None)
        original = (directory / SNAPSHOT_NAME).read_bytes()
        damaged = original
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            damaged = _mutate(damaged, data.draw)
        (directory / SNAPSHOT_NAME).write_bytes(damaged)
        try:
            storage, state = _load(directory)
        except RaftStorageError:
            return  # refused: a damaged snapshot means a damaged disk
        storage.close()
        assert state.snapshot is not None
        assert state.snapshot.meta == model.snapshot_meta and state.snapshot.data == model.snapshot_data
        assert (state.hard_state, state.entries) == model.candidates()[-1]
