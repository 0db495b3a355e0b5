"""Crash simulation: append, stop without close, damage the files, reopen.

The reopened log must equal the longest prefix of what was appended that lies before the first
damaged byte (never less, never more), every surviving batch must validate, offsets, index
lookups and time lookups must agree with a brute-force scan, and appends must continue at
log_end_offset. Replay a failure with the seed Hypothesis prints (pytest --hypothesis-seed=N).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol import records
from storage import LogConfig, ManualClock, PartitionLog
from storage.checkpoint import PartitionCheckpoint, read_checkpoint, write_checkpoint
from storage.files import segment_file_name

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000
EPOCH_FIELD = range(records.LEADER_EPOCH_AT, records.LEADER_EPOCH_AT + 4)


@dataclass
class Appended:
    base_offset: int
    data: bytes
    segment_base: int
    position: int

    @property
    def end(self) -> int:
        return self.position + len(self.data)

    @property
    def header(self) -> records.BatchHeader:
        return records.read_header(self.data)


def read_all(log: PartitionLog) -> list[bytes]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        log_slice = log.read(offset, 1 << 20)
        data = log_slice.read_bytes()
        out += [data[p: p + h.total_bytes] for p, h in records.iter_headers(data)]
        offset = log_slice.next_offset
    return out


def append_random(log: PartitionLog, rng: random.Random, count: int, clock: ManualClock) -> list[Appended]:
    """count appends of 1-3 batches each, timestamps jittered both ways, epochs rising now and then."""
    appended, epoch = [], log.last_leader_epoch or 0
    for _ in range(count):
        epoch += rng.random() < 0.1
        parts = [
            records.build_batch([(None, rng.randbytes(rng.randint(0, 80)), clock.time_ms() + rng.randint(-3000, 3000), None)
                                 for _ in range(rng.randint(1, 4))])
            for _ in range(rng.choice((1, 1, 1, 2, 3)))
        ]
        payload = bytearray(b"".join(parts))
        info = log.append(payload, epoch)  # stamped in place: payload is now what is on disk
        position = info.position_bytes
        for at, header in records.iter_headers(payload):
            data = bytes(payload[at: at + header.total_bytes])
            appended.append(Appended(header.base_offset, data, info.segment_base_offset, position))
            position += len(data)
        clock.advance(rng.randint(0, 50))
    return appended


def log_path(directory: Path, base: int, suffix: str = ".log") -> Path:
    return directory / segment_file_name(base, suffix)


def rewind_recovery_point(directory: Path, bases: list[int], rng: random.Random, mode: str) -> int:
    """Simulate a crash before the last checkpoint writes reached the disk; returns the index of
    the first segment recovery must re-validate."""
    if mode == "delete":
        (directory / "partition.checkpoint").unlink()
        return 0
    recovery_point = read_checkpoint(directory).recovery_point
    if mode == "older":
        recovery_point = rng.choice([b for b in bases if b <= recovery_point])
        write_checkpoint(directory, PartitionCheckpoint(recovery_point=recovery_point, log_start_offset=bases[0]))
    return max(i for i, b in enumerate(bases) if b <= recovery_point)


def damage_log(directory: Path, appended: list[Appended], bases: list[int], first_unflushed: int,
               rng: random.Random, kind: str) -> tuple[int, int] | None:
    """Cut or flip bytes in a segment recovery re-validates; returns (segment index, byte) of the
    damage, or None if there was nothing to damage."""
    candidates = [i for i in range(first_unflushed, len(bases)) if os.path.getsize(log_path(directory, bases[i]))]
    if not candidates:
        return None
    index = rng.choice(candidates[-2:])
    path = log_path(directory, bases[index])
    size = os.path.getsize(path)
    if kind == "cut":
        position = rng.randrange(size)
        os.truncate(path, position)
        return index, position
    epoch_bytes = {a.position + i for a in appended if a.segment_base == bases[index] for i in EPOCH_FIELD}
    choices = [p for p in range(size) if p not in epoch_bytes]  # leader_epoch is outside the CRC
    position = rng.choice(choices)
    with open(path, "r+b") as f:
        f.seek(position)
        old = f.read(1)[0]
        f.seek(position)
        f.write(bytes([old ^ rng.randint(1, 255)]))
    return index, position


def damage_index(directory: Path, bases: list[int], rng: random.Random) -> None:
    path = log_path(directory, rng.choice(bases), rng.choice((".index", ".timeindex")))
    if not path.exists():
        return
    size = os.path.getsize(path)
    action = rng.choice(("delete", "truncate", "garble", "extend"))
    if action == "delete":
        path.unlink()
    elif action == "truncate":
        os.truncate(path, rng.randint(0, size))
    elif action == "garble" and size:
        start = rng.randrange(size)
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(rng.randbytes(rng.randint(1, min(16, size - start))))
    else:
        with open(path, "ab") as f:
            f.write(rng.randbytes(rng.randint(1, 30)))


def surviving_prefix(appended: list[Appended], bases: list[int], damages: list[tuple[int, int, str]]) -> list[Appended]:
    """Batches before the first damaged one: a cut loses every batch ending past it, a flip the
    batch holding it; everything after the first loss goes too (a log is a prefix)."""
    out = []
    for batch in appended:
        index = bases.index(batch.segment_base)
        hit = any(
            index == seg and (batch.end > pos if kind == "cut" else batch.position <= pos < batch.end)
            for seg, pos, kind in damages
        )
        if hit:
            break
        out.append(batch)
    return out


def check_log(log: PartitionLog, expected: list[Appended]) -> None:
    assert read_all(log) == [a.data for a in expected]
    assert log.log_end_offset == (expected[-1].header.next_offset if expected else log.log_start_offset)
    for data in read_all(log):
        records.validate_batch(data)
    for offset in range(log.log_start_offset, log.log_end_offset):
        header = records.read_header(log.read(offset, 1).read_bytes())
        assert header.base_offset <= offset < header.next_offset, offset
    stamps = {a.header.max_timestamp + d for a in expected for d in (-1, 0, 1)} | {0, T0 + 10**9}
    for target in stamps:
        brute = next((a.base_offset for a in expected if a.header.max_timestamp >= target), None)
        assert log.offset_for_timestamp(target) == brute, target


def config_strategy():
    return st.builds(
        LogConfig,
        segment_bytes_max=st.integers(200, 1600),
        index_interval_bytes=st.integers(0, 300),
        index_bytes_max=st.integers(4, 24).map(lambda n: 12 * n),
    )


@settings(max_examples=70, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy(), seed=st.integers(0, 2**32), appends=st.integers(1, 30),
       checkpoint_mode=st.sampled_from(("keep", "keep", "older", "delete")),
       log_damage=st.lists(st.sampled_from(("cut", "flip")), max_size=2),
       index_damage=st.integers(0, 3))
def test_crash_then_damage_recovers_the_valid_prefix(tmp_path_factory, config, seed, appends, checkpoint_mode,
                                                     log_damage, index_damage):
    rng = random.Random(seed)
    directory = tmp_path_factory.mktemp("crash") / "t-0"
    clock = ManualClock(time_ms=T0)
    log = PartitionLog.open(directory, config, clock)
    appended = append_random(log, rng, appends, clock)
    bases = log.segment_base_offsets
    log._release()  # the process dies: no flush, no index writes, no clean-shutdown marker

    first_unflushed = rewind_recovery_point(directory, bases, rng, checkpoint_mode)
    damages = []
    for kind in log_damage:
        spot = damage_log(directory, appended, bases, first_unflushed, rng, kind)
        if spot is not None:
            damages.append((*spot, kind))
    for _ in range(index_damage):
        damage_index(directory, bases, rng)
    expected = surviving_prefix(appended, bases, damages)

    reopened = PartitionLog.open(directory, config, clock)
    stats = reopened.recovery_stats
    assert not stats.clean_shutdown
    if len(expected) == len(appended):
        assert stats.cut_reason is None, stats  # index damage alone never costs a batch
    # (a cut exactly between two batches of the last segment loses data without a bad byte to report)
    check_log(reopened, expected)

    # New appends continue contiguously, and a clean restart agrees.
    more = append_random(reopened, rng, 3, clock)
    assert more[0].base_offset == (expected[-1].header.next_offset if expected else reopened.log_start_offset)
    reopened.close()
    again = PartitionLog.open(directory, config, clock)
    assert again.recovery_stats.clean_shutdown
    check_log(again, expected + more)
    again.close()


# -- specific cases --------------------------------------------------------------------------------


def fill(directory: Path, clock: ManualClock, count: int = 20, **config) -> tuple[PartitionLog, list[Appended]]:
    log = PartitionLog.open(directory, LogConfig(**config), clock)
    return log, append_random(log, random.Random(7), count, clock)


def test_torn_tail_is_cut_at_the_last_whole_batch(tmp_path):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock)
    last = appended[-1]
    log._release()
    path = log_path(tmp_path / "t-0", last.segment_base)
    os.truncate(path, last.position + 30)  # half a header of the last batch
    reopened = PartitionLog.open(tmp_path / "t-0", LogConfig(), clock)
    assert reopened.log_end_offset == last.base_offset
    assert reopened.recovery_stats.bytes_truncated == 30 and "torn" in reopened.recovery_stats.cut_reason
    check_log(reopened, appended[:-1])


def test_lower_leader_epoch_is_a_cut_point(tmp_path):
    clock = ManualClock(T0)
    log = PartitionLog.open(tmp_path / "t-0", LogConfig(), clock)
    log.append(records.build_batch([(None, b"a", T0, None)]), 4)
    info = log.append(records.build_batch([(None, b"b", T0, None)]), 5)
    log._release()
    path = log_path(tmp_path / "t-0", 0)
    with open(path, "r+b") as f:  # the epoch field is outside the CRC: only the order catches it
        f.seek(info.position_bytes + records.LEADER_EPOCH_AT)
        f.write((3).to_bytes(4, "big"))
    reopened = PartitionLog.open(tmp_path / "t-0", LogConfig(), clock)
    assert reopened.log_end_offset == 1 and "leader epoch 3 after 4" in reopened.recovery_stats.cut_reason


@pytest.mark.parametrize("which", ["first", "middle"])
def test_damaged_base_offset_is_a_cut_point(tmp_path, which):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock, count=8)
    victim = appended[0] if which == "first" else appended[len(appended) // 2]
    log._release()
    with open(log_path(tmp_path / "t-0", victim.segment_base), "r+b") as f:  # base_offset is outside the CRC
        f.seek(victim.position + 7)
        f.write(bytes([victim.data[7] ^ 0x01]))
    reopened = PartitionLog.open(tmp_path / "t-0", LogConfig(), clock)
    assert "base offset" in reopened.recovery_stats.cut_reason
    check_log(reopened, appended[: appended.index(victim)])


def test_missing_checkpoint_revalidates_every_segment(tmp_path):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock, segment_bytes_max=300)
    count = log.segment_count
    log._release()
    (tmp_path / "t-0" / "partition.checkpoint").unlink()
    reopened = PartitionLog.open(tmp_path / "t-0", LogConfig(segment_bytes_max=300), clock)
    assert reopened.recovery_stats.segments_validated == count > 2
    assert all(s.sealed for s in reopened._segments[:-1])  # re-validated segments are fsynced and sealed
    assert read_checkpoint(tmp_path / "t-0").recovery_point == reopened.active_segment_base_offset
    check_log(reopened, appended)


def test_only_the_active_segment_is_revalidated_in_steady_state(tmp_path):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock, segment_bytes_max=300)
    assert log.segment_count > 2
    log._release()
    reopened = PartitionLog.open(tmp_path / "t-0", LogConfig(segment_bytes_max=300), clock)
    assert reopened.recovery_stats.segments_validated == 1
    check_log(reopened, appended)


def test_segment_that_does_not_continue_the_offsets_is_cut(tmp_path):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock, segment_bytes_max=300)
    bases = log.segment_base_offsets
    log.close()
    directory = tmp_path / "t-0"
    for suffix in (".log", ".index", ".timeindex"):  # pretend a segment of the middle went missing
        log_path(directory, bases[1], suffix).unlink()
    reopened = PartitionLog.open(directory, LogConfig(segment_bytes_max=300), clock)
    assert reopened.segment_base_offsets == [0] and "does not continue" in reopened.recovery_stats.cut_reason
    check_log(reopened, [a for a in appended if a.segment_base == 0])
    assert not log_path(directory, bases[2]).exists()


def test_clean_shutdown_still_repairs_damaged_indexes(tmp_path):
    clock = ManualClock(T0)
    config = LogConfig(segment_bytes_max=400, index_interval_bytes=50)
    log = PartitionLog.open(tmp_path / "t-0", config, clock)
    for i in range(30):  # rising timestamps: every batch gets a time entry, several offset entries per segment
        log.append(records.build_batch([(None, b"v" * 40, T0 + i, None)]), 0)
    expected = read_all(log)
    bases = log.segment_base_offsets
    assert len(bases) >= 3
    log.close()
    directory = tmp_path / "t-0"
    log_path(directory, bases[0], ".index").unlink()
    os.truncate(log_path(directory, bases[1], ".timeindex"), 12)  # short by whole entries
    os.truncate(log_path(directory, bases[-1], ".index"), 8)
    reopened = PartitionLog.open(directory, config, clock)
    assert reopened.recovery_stats.clean_shutdown and reopened.recovery_stats.indexes_rebuilt == 3
    assert read_all(reopened) == expected
    for i in range(30):
        assert reopened.offset_for_timestamp(T0 + i) == i


def test_interrupted_truncate_fully_is_finished_on_open(tmp_path):
    clock = ManualClock(T0)
    log, _ = fill(tmp_path / "t-0", clock)
    log._release()
    directory = tmp_path / "t-0"
    write_checkpoint(directory, PartitionCheckpoint(recovery_point=0, log_start_offset=500, restart_at=500))
    reopened = PartitionLog.open(directory, LogConfig(), clock)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (500, 500)
    assert reopened.append(records.build_batch([(None, b"x", T0, None)]), 9).first_offset == 500


def test_stray_files_are_removed(tmp_path):
    clock = ManualClock(T0)
    log, appended = fill(tmp_path / "t-0", clock)
    log.close()
    directory = tmp_path / "t-0"
    (directory / segment_file_name(999, ".index")).write_bytes(b"orphan")
    (directory / "partition.checkpoint.tmp").write_bytes(b"half")
    reopened = PartitionLog.open(directory, LogConfig(), clock)
    assert reopened.recovery_stats.stray_files_removed == 2
    assert not (directory / segment_file_name(999, ".index")).exists()
    check_log(reopened, appended)
