"""PartitionLog and its segments: offsets, indexes, rolls, reads, truncation, retention, errors."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from client.protocol import records
from storage import (
    InvalidAppendError,
    LogConfig,
    LogManager,
    ManualClock,
    OffsetMismatchError,
    OffsetOutOfRangeError,
    PartitionLog,
    RecordBatchTooLargeError,
    StaleLeaderEpochError,
    StorageError,
)
from storage.aio import read_slice_cold
from storage.config import LogConfigError
from storage.index import OffsetIndex, TimeIndex

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000


def batch(count: int = 1, value_bytes: int = 10, timestamp_ms: int = T0) -> bytes:
    return records.build_batch([(None, b"v" * value_bytes, timestamp_ms, None) for _ in range(count)])


def batches_of(data: bytes) -> list[records.BatchHeader]:
    return [header for _, header in records.iter_headers(data)]


def read_all(log: PartitionLog) -> bytes:
    out, offset = bytearray(), log.log_start_offset
    while offset < log.log_end_offset:
        log_slice = log.read(offset, 1 << 20)
        out += log_slice.read_bytes()
        offset = log_slice.next_offset
    return bytes(out)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time_ms=T0)


def open_log(path: Path, clock: ManualClock, **config) -> PartitionLog:
    return PartitionLog.open(path / "topic-0", LogConfig(**config), clock)


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("segment_bytes_max", 10), ("segment_bytes_max", 2**31), ("segment_ms_max", 0),
    ("index_interval_bytes", -1), ("index_bytes_max", 11), ("retention_bytes", -2),
    ("retention_ms", -5), ("flush_messages", 0), ("flush_ms", -1), ("batch_bytes_max", 60),
    ("segment_bytes_max", "big"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(LogConfigError, match=f"LogConfig.{field}"):
        LogConfig(**{field: value})


# -- appends -------------------------------------------------------------------------------------


def test_append_assigns_offsets_and_stamps_copy_of_bytes(tmp_path, clock):
    log = open_log(tmp_path, clock)
    first = batch(3)
    info = log.append(first, leader_epoch=7)
    assert (info.first_offset, info.last_offset, info.position_bytes) == (0, 2, 0)
    assert info.log_append_time_ms == T0 and info.record_count == 3 and info.size_bytes == len(first)
    assert records.read_header(first).base_offset == 0 and records.read_header(first).leader_epoch == -1  # untouched
    info = log.append(batch(2), leader_epoch=7)
    assert (info.first_offset, info.last_offset, info.position_bytes) == (3, 4, len(first))
    headers = batches_of(read_all(log))
    assert [(h.base_offset, h.leader_epoch) for h in headers] == [(0, 7), (3, 7)]
    assert log.log_end_offset == 5 and log.last_leader_epoch == 7


def test_append_stamps_bytearray_and_writable_memoryview_in_place(tmp_path, clock):
    log = open_log(tmp_path, clock)
    log.append(batch(4), 1)
    caller = bytearray(batch(2))
    log.append(caller, 2)
    assert records.read_header(caller).base_offset == 4 and records.read_header(caller).leader_epoch == 2
    backing = bytearray(batch(1))
    log.append(memoryview(backing), 2)
    assert records.read_header(backing).base_offset == 6
    assert read_all(log)[-len(backing):] == backing


def test_append_of_several_batches_gets_contiguous_offsets(tmp_path, clock):
    log = open_log(tmp_path, clock)
    payload = batch(2) + batch(3) + batch(1)
    info = log.append(payload, 0)
    assert (info.first_offset, info.last_offset, info.record_count) == (0, 5, 6)
    assert [(h.base_offset, h.next_offset) for h in batches_of(read_all(log))] == [(0, 2), (2, 5), (5, 6)]
    data = read_all(log)
    for position, _ in records.iter_headers(data):
        records.validate_batch(data, position)  # stamping never breaks the CRC


def test_append_refuses_oversized_bad_framing_and_stale_epochs(tmp_path, clock):
    log = open_log(tmp_path, clock, batch_bytes_max=200)
    log.append(batch(1), 5)
    with pytest.raises(RecordBatchTooLargeError, match="batch_bytes_max 200"):
        log.append(batch(1, value_bytes=300), 5)
    with pytest.raises(InvalidAppendError):
        log.append(batch(1)[:-3], 5)
    with pytest.raises(InvalidAppendError):
        log.append(batch(1) + b"xx", 5)
    with pytest.raises(StaleLeaderEpochError, match="below the log's last epoch 5"):
        log.append(batch(1), 4)
    assert log.log_end_offset == 1 and log.size_bytes == len(batch(1))


def test_append_replicated_keeps_offsets_and_refuses_gaps(tmp_path, clock):
    leader = open_log(tmp_path / "leader", clock)
    for count in (2, 1, 3):
        leader.append(batch(count), 3)
    data = read_all(leader)
    follower = open_log(tmp_path / "follower", clock)
    follower.append_replicated(data)
    assert read_all(follower) == data and follower.log_end_offset == 6
    with pytest.raises(OffsetMismatchError, match="continues at 6"):
        follower.append_replicated(data)  # goes backwards
    gap = bytearray(batch(1))
    records.stamp_batch(gap, 0, 9, 3)
    with pytest.raises(OffsetMismatchError):
        follower.append_replicated(bytes(gap))
    stale = bytearray(batch(1))
    records.stamp_batch(stale, 0, 6, 2)
    with pytest.raises(StaleLeaderEpochError):
        follower.append_replicated(stale)
    assert follower.log_end_offset == 6


# -- indexes -------------------------------------------------------------------------------------


def test_offset_index_gets_one_entry_per_interval_and_lookups_floor(tmp_path, clock):
    one = batch(1, value_bytes=40)
    log = open_log(tmp_path, clock, index_interval_bytes=len(one) * 3)
    for _ in range(10):
        log.append(one, 0)
    index = log._active.offset_index
    # Before batch k the log holds k*len bytes; an entry is due once 3 batches went by without one.
    assert [index.entry(i) for i in range(index.entries)] == [(3, 3 * len(one)), (6, 6 * len(one)), (9, 9 * len(one))]
    assert index.lookup(0) == (0, 0)
    assert index.lookup(5) == (3, 3 * len(one))
    assert index.lookup(6) == (6, 6 * len(one))
    assert index.lookup(100) == (9, 9 * len(one))
    assert index.floor_by_position(7 * len(one)) == (6, 6 * len(one))


@pytest.mark.parametrize("interval", [0, 1, 100, 1000])
def test_rebuilt_indexes_equal_the_appended_ones(tmp_path, clock, interval):
    """The indexing rule is one function: append, runtime rebuild and recovery must all agree."""
    log = open_log(tmp_path, clock, index_interval_bytes=interval)
    for i, timestamp in enumerate([5, 3, 9, 9, 12, 1, 15, 15, 14, 20] * 3):
        log.append(batch(1 + i % 3, value_bytes=7 * i, timestamp_ms=timestamp), 0)
    log.append(batch(1) + batch(2, timestamp_ms=99), 0)
    log.truncate_to(log.log_end_offset - 9)  # appends after a truncation index like fresh ones
    for i, timestamp in enumerate([2, 30, 101, 4, 102]):
        log.append(batch(1 + i % 2, value_bytes=50, timestamp_ms=timestamp), 0)
    segment = log._active
    appended = (segment.offset_index.raw_bytes(), segment.time_index.raw_bytes())
    segment.rebuild_indexes()
    assert (segment.offset_index.raw_bytes(), segment.time_index.raw_bytes()) == appended
    log._release()
    reopened = open_log(tmp_path, clock, index_interval_bytes=interval)  # unclean: recovery rebuilds
    segment = reopened._active
    assert reopened.recovery_stats.segments_validated == 1
    assert (segment.offset_index.raw_bytes(), segment.time_index.raw_bytes()) == appended


def test_index_append_asserts_strictly_increasing(tmp_path):
    index = OffsetIndex.create(tmp_path / "x.index", 100, 10)
    index.append(105, 50)
    with pytest.raises(AssertionError, match="does not follow"):
        index.append(105, 60)
    with pytest.raises(AssertionError, match="does not follow"):
        index.append(106, 50)
    times = TimeIndex.create(tmp_path / "x.timeindex", 100, 10)
    times.append(1000, 100)
    with pytest.raises(AssertionError, match="does not follow"):
        times.append(1000, 101)


def test_time_index_has_an_entry_per_new_max_timestamp(tmp_path, clock):
    log = open_log(tmp_path, clock)
    for timestamp in (10, 30, 20, 30, 40, 5):
        log.append(batch(1, timestamp_ms=timestamp), 0)
    index = log._active.time_index
    assert [index.entry(i) for i in range(index.entries)] == [(10, 0), (30, 1), (40, 4)]


def test_offset_for_timestamp_is_first_batch_reaching_it(tmp_path, clock):
    log = open_log(tmp_path, clock, segment_bytes_max=300)
    stamps = [50, 10, 70, 60, 70, 90, 80, 100, 20]
    for timestamp in stamps:
        log.append(batch(2, timestamp_ms=timestamp), 0)
    assert log.segment_count > 2
    for target in range(0, 110, 5):
        expected = next((2 * i for i, t in enumerate(stamps) if t >= target), None)
        assert log.offset_for_timestamp(target) == expected, target


# -- rolls ---------------------------------------------------------------------------------------


def test_roll_by_size_names_segments_by_base_offset(tmp_path, clock):
    one = batch(2, value_bytes=50)
    log = open_log(tmp_path, clock, segment_bytes_max=len(one) * 3)
    for _ in range(7):
        log.append(one, 0)
    assert log.segment_base_offsets == [0, 6, 12]
    names = sorted(p.name for p in (tmp_path / "topic-0").iterdir() if p.suffix == ".log")
    assert names == ["00000000000000000000.log", "00000000000000000006.log", "00000000000000000012.log"]
    assert all(len(n.split(".")[0]) == 20 for n in names)


def test_roll_by_age_uses_the_injected_clock(tmp_path, clock):
    log = open_log(tmp_path, clock, segment_ms_max=1000)
    log.append(batch(1), 0)
    clock.advance(1000)
    log.append(batch(1), 0)
    assert log.segment_count == 1  # exactly segment_ms_max old is not older
    clock.advance(1)
    info = log.append(batch(1), 0)
    assert log.segment_count == 2 and info.segment_base_offset == 2


def test_full_index_forces_a_roll(tmp_path, clock):
    log = open_log(tmp_path, clock, index_bytes_max=36)  # three time-index entries
    for timestamp in range(5):
        log.append(batch(1, timestamp_ms=T0 + timestamp), 0)
    assert log.segment_base_offsets == [0, 3]


def test_roll_emits_an_event(tmp_path, clock):
    events = []
    log = PartitionLog.open(tmp_path / "t-0", LogConfig(segment_bytes_max=100), clock, events.append)
    log.append(batch(1, value_bytes=80), 0)
    log.append(batch(1, value_bytes=80), 0)
    rolled = [e for e in events if e.kind == "segment_rolled"]
    assert rolled and rolled[0].fields["reason"] == "segment_bytes_max" and rolled[0].fields["base_offset"] == 1


# -- reads ---------------------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path, clock):
    """Batches of 1..4 records with an index entry about every other batch, three segments."""
    log = open_log(tmp_path, clock, index_interval_bytes=150, segment_bytes_max=900)
    sizes = [1, 3, 2, 4, 1, 1, 3, 2, 2, 4, 1, 3]
    for count in sizes:
        log.append(batch(count, value_bytes=20), 0)
    return log


def test_read_from_any_offset_returns_the_batch_holding_it(filled):
    assert filled.segment_count >= 2
    for offset in range(filled.log_end_offset):
        log_slice = filled.read(offset, 1)
        headers = batches_of(log_slice.read_bytes())
        assert len(headers) == 1
        assert headers[0].base_offset <= offset < headers[0].next_offset
        assert (log_slice.first_offset, log_slice.next_offset) == (headers[0].base_offset, headers[0].next_offset)


def test_read_respects_max_bytes_and_max_offset(filled):
    whole = filled.read(0, 1 << 20)
    headers = batches_of(whole.read_bytes())
    sizes = [h.total_bytes for h in headers]
    for max_bytes in range(1, sum(sizes) + 2, 7):
        got = batches_of(filled.read(0, max_bytes).read_bytes())
        fitting = max(1, sum(1 for i in range(len(sizes)) if sum(sizes[: i + 1]) <= max_bytes))
        assert len(got) == fitting
    boundaries = [h.next_offset for h in headers]
    for max_offset in range(1, boundaries[-1] + 1):
        got = filled.read(0, 1 << 20, max_offset=max_offset)
        assert got.next_offset == max((b for b in boundaries if b <= max_offset), default=0)
        assert all(h.next_offset <= max_offset for h in batches_of(got.read_bytes()))
    assert filled.read(0, 0).length_bytes == 0


def test_read_with_max_bytes_exactly_at_batch_boundaries(filled):
    headers = batches_of(filled.read(0, 1 << 20).read_bytes())
    for k in range(1, len(headers) + 1):
        exact = sum(h.total_bytes for h in headers[:k])
        assert len(batches_of(filled.read(0, exact).read_bytes())) == k
        assert len(batches_of(filled.read(0, exact - 1).read_bytes())) == max(1, k - 1)


def test_read_edges_and_out_of_range(filled):
    end = filled.log_end_offset
    empty = filled.read(end, 1000)
    assert empty.length_bytes == 0 and empty.read_bytes() == b"" and empty.next_offset == end
    with pytest.raises(OffsetOutOfRangeError):
        filled.read(end + 1, 1000)
    with pytest.raises(OffsetOutOfRangeError):
        filled.read(-1, 1000)
    log_slice = filled.read(0, 1000)
    assert log_slice.fd >= 0 and os.pread(log_slice.fd, log_slice.length_bytes, log_slice.position) == log_slice.read_bytes()


def test_read_whole_log_across_segments(filled):
    data = read_all(filled)
    assert [h.base_offset for h in batches_of(data)][0] == 0
    assert batches_of(data)[-1].next_offset == filled.log_end_offset


def test_damaged_index_entry_used_to_jump_is_detected_and_rebuilt(filled):
    segment = filled._active
    expected = filled.read(segment.base_offset, 1 << 20)
    last = segment.offset_index.entries - 1
    relative, position = segment.offset_index.entry(last)
    segment.offset_index._buf[last * 8: last * 8 + 8] = struct.pack(">II", relative - 1, position)
    got = filled.read(segment.base_offset, 1 << 20)
    assert (got.next_offset, got.read_bytes()) == (expected.next_offset, expected.read_bytes())
    assert segment.offset_index.entry(last) == (relative, position)


def test_damaged_time_entry_between_good_ones_is_detected(tmp_path, clock):
    log = open_log(tmp_path, clock)
    for i in range(10):
        log.append(batch(1, timestamp_ms=T0 + 10 * i), 0)
    index = log._active.time_index
    index._buf[5 * 12: 5 * 12 + 12] = struct.pack(">qI", T0 + 45, 5)  # still in order, but wrong
    assert log.offset_for_timestamp(T0 + 48) == 5
    assert log._active.time_index.entry(5) == (T0 + 50, 5)  # rebuilt


def test_damaged_index_entry_is_rebuilt_on_lookup(filled):
    segment = filled._active
    assert segment.offset_index.entries
    relative, position = segment.offset_index.entry(0)
    segment.offset_index._buf[0:8] = struct.pack(">II", relative, position + 1)  # points mid-batch
    for offset in range(segment.base_offset, filled.log_end_offset):
        headers = batches_of(filled.read(offset, 1).read_bytes())
        assert headers[0].base_offset <= offset < headers[0].next_offset
    assert segment.offset_index.entry(0) == (relative, position)


# -- truncation ----------------------------------------------------------------------------------


def test_truncate_to_batch_boundary_and_mid_batch(filled):
    headers = batches_of(read_all(filled))
    cut = headers[7]
    filled.truncate_to(cut.base_offset + 1)  # inside batch 7: the whole batch goes
    assert filled.log_end_offset == cut.base_offset
    assert batches_of(read_all(filled)) == headers[:7]
    filled.truncate_to(headers[3].base_offset)
    assert batches_of(read_all(filled)) == headers[:3] and filled.segment_count == 1
    info = filled.append(batch(2), 0)
    assert info.first_offset == headers[3].base_offset
    for offset in range(filled.log_end_offset):
        assert filled.read(offset, 1).first_offset <= offset


def test_truncate_to_segment_base_and_index_consistency(filled):
    bases = filled.segment_base_offsets
    filled.truncate_to(bases[1])
    assert filled.log_end_offset == bases[1] and filled.segment_base_offsets == bases[:2]
    assert filled._active.size_bytes == 0
    filled.append(batch(1), 0)
    assert filled.log_end_offset == bases[1] + 1


def test_truncate_fully_and_start_at(filled, tmp_path, clock):
    filled.truncate_fully_and_start_at(1000)
    assert (filled.log_start_offset, filled.log_end_offset, filled.size_bytes) == (1000, 1000, 0)
    assert filled.append(batch(2), 0).first_offset == 1000
    filled.close()
    reopened = open_log(tmp_path, clock)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (1000, 1002)


# -- retention -----------------------------------------------------------------------------------


def test_retention_by_bytes_deletes_whole_oldest_segments_never_the_active(tmp_path, clock):
    one = batch(1, value_bytes=60)
    log = open_log(tmp_path, clock, segment_bytes_max=len(one) * 2, retention_bytes=len(one) * 3)
    for _ in range(8):
        log.append(one, 0)
    assert log.segment_base_offsets == [0, 2, 4, 6]
    kept = log.read(6, 1 << 20)
    assert log.enforce_retention() == [0, 2, 4]
    assert log.log_start_offset == 6 and log.size_bytes == 2 * len(one)
    assert kept.read_bytes()  # a slice of a surviving segment is unaffected
    log.update_config(LogConfig(segment_bytes_max=len(one) * 2, retention_bytes=0))
    assert log.enforce_retention() == [] and log.segment_count == 1  # the active segment stays


def test_retention_by_bytes_keeps_a_total_exactly_at_the_limit(tmp_path, clock):
    one = batch(1, value_bytes=60)
    log = open_log(tmp_path, clock, segment_bytes_max=len(one) * 2, retention_bytes=len(one) * 4)
    for _ in range(6):
        log.append(one, 0)
    assert log.enforce_retention() == [0]  # 6 batches > 4: one segment goes, leaving exactly 4
    assert log.size_bytes == len(one) * 4 and log.enforce_retention() == []


def test_retention_by_age_uses_max_timestamp(tmp_path, clock):
    log = open_log(tmp_path, clock, segment_bytes_max=200, retention_ms=1000)
    for i in range(6):
        log.append(batch(1, value_bytes=100, timestamp_ms=T0 + i * 100), 0)
    bases = log.segment_base_offsets
    assert len(bases) == 6
    doomed_slice = log.read(0, 1000)
    assert log.enforce_retention(now_ms=T0 + 1000) == []  # newest of segment 0 is exactly 1000 old
    assert log.enforce_retention(now_ms=T0 + 1101) == [0, 1]
    assert log.log_start_offset == 2
    assert batches_of(doomed_slice.read_bytes())[0].base_offset == 0  # fd outlives the deleted file
    with pytest.raises(OffsetOutOfRangeError):
        log.read(1, 100)
    assert log.enforce_retention(now_ms=T0 + 10**9) == [2, 3, 4]
    assert log.segment_count == 1


# -- durability, lifecycle -----------------------------------------------------------------------


def test_flush_policies(tmp_path, clock, monkeypatch):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    log = open_log(tmp_path / "a", clock, flush_messages=3)
    log.append(batch(2), 0)
    assert syncs == []
    log.append(batch(1), 0)
    assert len(syncs) == 1  # three records: fsync before append returns
    log = open_log(tmp_path / "b", clock, flush_ms=500)
    log.append(batch(1), 0)
    assert not log.maybe_flush() and len(syncs) == 1
    clock.advance(500)
    assert log.maybe_flush() and len(syncs) == 2
    assert not log.maybe_flush()
    log.append(batch(1), 0)
    clock.advance(600)
    log.append(batch(1), 0)  # checked on append too
    assert len(syncs) == 3
    log = open_log(tmp_path / "c", clock, flush_messages=3)
    log.append(batch(2), 0)
    log.roll()  # sealing fsyncs those two records: the count starts again
    log.append(batch(1), 0)
    assert len(syncs) == 4  # the roll's fsync only


def test_close_writes_marker_and_reopen_skips_recovery(tmp_path, clock):
    log = open_log(tmp_path, clock, segment_bytes_max=300)
    for count in range(1, 9):
        log.append(batch(count), 0)
    data = read_all(log)
    log.close()
    assert (tmp_path / "topic-0" / "clean-shutdown").exists()
    with pytest.raises(StorageError):
        log.append(batch(1), 0)
    reopened = open_log(tmp_path, clock, segment_bytes_max=300)
    assert not (tmp_path / "topic-0" / "clean-shutdown").exists()
    assert reopened.recovery_stats.clean_shutdown and reopened.recovery_stats.segments_validated == 0
    assert read_all(reopened) == data
    assert reopened.append(batch(1), 0).first_offset == sum(range(1, 9))


def test_delete_removes_the_directory(tmp_path, clock):
    log = open_log(tmp_path, clock)
    log.append(batch(1), 0)
    log.delete()
    assert not (tmp_path / "topic-0").exists()
    assert list(tmp_path.iterdir()) == []


# -- disk errors ---------------------------------------------------------------------------------


def _snapshot(log: PartitionLog):
    segment = log._active
    return (log.log_end_offset, log.size_bytes, os.path.getsize(segment.log_path), read_all(log),
            segment.offset_index.raw_bytes(), segment.time_index.raw_bytes(), log.last_leader_epoch)


@pytest.mark.parametrize("payload_kind", ["bytearray", "bytes"])
def test_disk_full_mid_write_leaves_the_log_unchanged(tmp_path, clock, monkeypatch, payload_kind):
    log = open_log(tmp_path, clock, index_interval_bytes=0)
    log.append(batch(3), 1)
    log.append(batch(1), 1)
    before = _snapshot(log)
    real_write, real_writev = os.write, os.writev

    def partial_then_enospc(fd, data):
        real_write(fd, bytes(memoryview(data)[:17]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def partial_writev_then_enospc(fd, buffers):
        real_write(fd, bytes(buffers[0]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", partial_then_enospc)
    monkeypatch.setattr(os, "writev", partial_writev_then_enospc)
    payload = bytearray(batch(2)) if payload_kind == "bytearray" else batch(2)
    with pytest.raises(StorageError, match="No space left on device"):
        log.append(payload, 2)
    with pytest.raises(StorageError, match="ENOSPC"):
        log.append(batch(1) + batch(1), 2)  # the multi-batch path too
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "writev", real_writev)
    assert _snapshot(log) == before
    info = log.append(batch(2), 2)
    assert info.first_offset == before[0] and info.position_bytes == before[1]
    assert [h.base_offset for h in batches_of(read_all(log))] == [0, 3, 4]


def test_a_write_that_makes_no_progress_fails_instead_of_spinning(tmp_path, clock, monkeypatch):
    log = open_log(tmp_path, clock)
    log.append(batch(1), 0)
    before = _snapshot(log)
    real_write = os.write
    calls = []

    def stuck(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(memoryview(data)[:10])) if len(calls) == 1 else 0

    monkeypatch.setattr(os, "write", stuck)
    with pytest.raises(StorageError, match="made no progress"):
        log.append(bytearray(batch(2)), 0)
    monkeypatch.setattr(os, "write", real_write)
    assert _snapshot(log) == before and len(calls) == 2


@pytest.mark.parametrize("written_by_writev", [5, 16, 70])
def test_short_writes_are_completed(tmp_path, clock, monkeypatch, written_by_writev):
    log = open_log(tmp_path, clock)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(memoryview(data)[:50])))
    log.append(bytearray(batch(3, value_bytes=100)), 0)

    def short_writev(fd, buffers):
        joined = b"".join(bytes(b) for b in buffers)
        return real_write(fd, joined[:written_by_writev])

    monkeypatch.setattr(os, "writev", short_writev)
    log.append(batch(2, value_bytes=100), 0)  # bytes: the stamped-prefix path
    monkeypatch.setattr(os, "write", real_write)
    data = read_all(log)
    assert [h.next_offset for h in batches_of(data)] == [3, 5]
    for position, _ in records.iter_headers(data):
        records.validate_batch(data, position)


# -- manager and async helpers -------------------------------------------------------------------


def test_log_manager_creates_opens_and_deletes(tmp_path, clock):
    manager = LogManager(tmp_path / "data", LogConfig(segment_bytes_max=500), clock)
    orders = manager.create("orders.v1-eu", 3)
    orders.append(batch(2), 0)
    manager.create("clicks", 0).append(batch(1), 0)
    with pytest.raises(StorageError, match="already exists"):
        manager.create("clicks", 0)
    with pytest.raises(StorageError, match="illegal topic"):
        manager.create("bad/name", 0)
    with pytest.raises(StorageError, match="in use"):
        LogManager(tmp_path / "data", LogConfig(), clock)
    manager.close()
    assert (tmp_path / "data" / "orders.v1-eu-3" / "clean-shutdown").exists()

    manager = LogManager(tmp_path / "data", LogConfig(), clock)
    manager.open_all(recovery_threads=2)
    assert set(manager.partitions()) == {("orders.v1-eu", 3), ("clicks", 0)}
    assert manager.get("orders.v1-eu", 3).log_end_offset == 2
    assert manager.get("nope", 0) is None
    manager.delete("clicks", 0)
    assert not (tmp_path / "data" / "clicks-0").exists()
    assert manager.enforce_retention() == {}
    manager.flush_all()
    manager.close()


async def test_read_slice_cold_matches_pread(tmp_path, clock):
    log = open_log(tmp_path, clock)
    for count in (1, 2, 3):
        log.append(batch(count), 0)
    log_slice = log.read(0, 1 << 20)
    assert await read_slice_cold(log_slice) == log_slice.read_bytes()
    assert await read_slice_cold(log.read(log.log_end_offset, 100)) == b""


def test_storage_imports_nothing_but_records_and_no_asyncio():
    root = Path(__file__).resolve().parent.parent / "storage"
    for path in root.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped.startswith(("import ", "from ")):
                continue
            assert "broker" not in stripped, f"{path.name}: {stripped}"
            if "client" in stripped:
                assert stripped.startswith(("from client.protocol.records", "from client.protocol.limits")), stripped
            if path.name != "aio.py":
                assert "asyncio" not in stripped and "aiofiles" not in stripped and "socket" not in stripped, stripped
