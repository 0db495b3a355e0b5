"""Storage recovery fuzzing: write batches through PartitionLog, stop without close (no flush,
no index writes, no clean-shutdown marker), damage files at random, reopen.

Only StorageError may escape PartitionLog.open and the reads after it; when it opens, the log
is a prefix of what was written (offsets, lengths and every CRC-covered byte; the leader epoch is
outside the CRC, so an epoch raised by the damage is accepted), reads agree with each other,
appends continue at log_end_offset, and a clean close and reopen keeps all of it.

Damage to a .log below the recovery point is not fuzzed with the checkpoint intact: those
segments are known flushed and recovery trusts their bytes by design (as Kafka does), so it
cannot notice a flip inside a record there. With the checkpoint deleted or garbled recovery
trusts nothing, and every file is fair game."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from client.protocol import records
from storage import LogConfig, ManualClock, PartitionLog
from storage.checkpoint import read_checkpoint
from storage.errors import StorageError
from storage.files import CHECKPOINT_FILE, segment_file_name
from tests.fuzz.conftest import fuzz_settings, fuzz_timeout

pytestmark = pytest.mark.timeout(fuzz_timeout(150))

T0 = 1_700_000_000_000
_CHECKPOINT_DAMAGE = ("keep", "keep", "delete", "garble", "values")


def _masked(batch: bytes) -> bytes:
    """A batch with its leader epoch zeroed (the field is outside the CRC)."""
    return batch[: records.LEADER_EPOCH_AT] + b"\0\0\0\0" + batch[records.LEADER_EPOCH_AT + 4:]


def _write(directory: Path, config: LogConfig, clock: ManualClock, rng: random.Random, count: int) -> list[bytes]:
    log = PartitionLog.open(directory, config, clock)
    written, epoch = [], 0
    for _ in range(count):
        epoch += rng.random() < 0.2
        payload = bytearray(b"".join(
            records.build_batch([(None, rng.randbytes(rng.randint(0, 60)), clock.time_ms() + rng.randint(-500, 500), None)
                                 for _ in range(rng.randint(1, 3))])
            for _ in range(rng.choice((1, 1, 2)))))
        log.append(payload, epoch)
        written += [bytes(payload[p: p + h.total_bytes]) for p, h in records.iter_headers(payload)]
        clock.advance(rng.randint(0, 20))
    log._release()  # the process dies: no flush, no index writes, no clean-shutdown marker
    return written


def _read_all(log: PartitionLog) -> list[bytes]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        piece = log.read(offset, 1 << 16)
        data = piece.read_bytes()
        assert data, f"empty read at {offset} below log_end_offset {log.log_end_offset}"
        out += [data[p: p + h.total_bytes] for p, h in records.iter_headers(data)]
        offset = piece.next_offset
    return out


def _damage_file(path: Path, rng: random.Random) -> None:
    """Byte damage; index files may also vanish (a .log that vanishes whole takes its offsets with
    it, and no checksum can tell: that is a lost file, not damaged bytes, and out of scope)."""
    size = path.stat().st_size
    actions = ("flip", "garble", "truncate", "extend", "zeros") + (("delete",) if path.suffix != ".log" else ())
    action = rng.choice(actions)
    if action == "delete":
        path.unlink()
    elif action == "truncate":
        os.truncate(path, rng.randint(0, size))
    elif action in ("extend", "zeros"):
        with open(path, "ab") as f:
            n = rng.randint(1, 80)
            f.write(b"\0" * n if action == "zeros" else rng.randbytes(n))
    elif size:
        at = rng.randrange(size)
        with open(path, "r+b") as f:
            f.seek(at)
            if action == "flip":
                old = f.read(1)[0]
                f.seek(at)
                f.write(bytes([old ^ rng.randint(1, 255)]))
            else:
                f.write(rng.randbytes(rng.randint(1, min(24, size - at))))


def _hostile_checkpoint(directory: Path) -> bool:
    """A checkpoint that decodes with restart_at outside the offsets a segment file name can hold."""
    stored = read_checkpoint(directory)
    return stored is not None and stored.restart_at is not None and not 0 <= stored.restart_at < 10**19


def _damage_checkpoint(directory: Path, mode: str, rng: random.Random) -> bool:
    """Returns True if recovery may still trust segments below the checkpoint's recovery point."""
    path = directory / CHECKPOINT_FILE
    if mode == "keep" or not path.exists():
        return path.exists()
    if mode == "delete":
        path.unlink()
        return False
    if mode == "garble":
        text = bytearray(path.read_bytes())
        text[rng.randrange(len(text))] = rng.randrange(256)
        path.write_bytes(bytes(text))
        return read_checkpoint(directory) is not None
    # Structurally valid text with hostile values (restart_at stays "-": see the docstring of
    # test_checkpoint_values_never_break_open for restart_at).
    value = rng.choice((-1, -(10**6), 0, 1, 7, 10**19, 10**25))
    other = rng.choice((0, 1, -1, 10**25))
    path.write_text(f"tidelog-partition-checkpoint 1\nrecovery_point {value}\nlog_start_offset {other}\nrestart_at -\n")
    return True


@fuzz_settings(0.15)
@given(seed=st.integers(0, 2**32 - 1), appends=st.integers(0, 25),
       segment_bytes_max=st.integers(150, 1200), index_interval_bytes=st.integers(0, 300),
       index_entries=st.integers(2, 20), checkpoint=st.sampled_from(_CHECKPOINT_DAMAGE),
       damages=st.integers(0, 4))
def test_damaged_partition_reopens_as_a_prefix(seed, appends, segment_bytes_max, index_interval_bytes,
                                               index_entries, checkpoint, damages):
    rng = random.Random(seed)
    config = LogConfig(segment_bytes_max=segment_bytes_max, index_interval_bytes=index_interval_bytes,
                       index_bytes_max=12 * index_entries)
    clock = ManualClock(time_ms=T0)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name) / "t-0"
        written = _write(directory, config, clock, rng, appends)
        bases = sorted(int(p.name[:20]) for p in directory.glob("*.log"))
        stored = read_checkpoint(directory)
        trusted = _damage_checkpoint(directory, checkpoint, rng)
        assume(not _hostile_checkpoint(directory))  # a known crash, pinned in test_fuzz_regressions.py
        # Segments recovery re-validates in any case: from the one holding the recovery point on.
        point = stored.recovery_point if stored else 0
        if trusted and checkpoint != "keep":
            exposed = bases[-1:]  # a changed recovery point may make every sealed segment trusted
        elif trusted:
            exposed = [b for b in bases if b >= max([x for x in bases if x <= point] or [0])]
        else:
            exposed = bases
        for _ in range(damages):
            base = rng.choice(bases)
            suffix = rng.choice((".log", ".index", ".timeindex"))
            if suffix == ".log" and base not in exposed:
                suffix = ".index"
            path = directory / segment_file_name(base, suffix)
            if path.exists():
                _damage_file(path, rng)

        try:
            log = PartitionLog.open(directory, config, clock)
        except StorageError:
            return
        try:
            survived = _read_all(log)
        except StorageError:
            log._release()
            return
        assert len(survived) <= len(written)
        assert [_masked(b) for b in survived] == [_masked(b) for b in written[: len(survived)]]
        if survived:
            assert log.log_end_offset == records.read_header(survived[-1]).next_offset
            epochs = [records.read_header(b).leader_epoch for b in survived]
            assert epochs == sorted(epochs)
        for batch in survived:
            records.validate_batch(batch)
        for offset in range(log.log_start_offset, log.log_end_offset):
            header = records.read_header(log.read(offset, 1).read_bytes())
            assert header.base_offset <= offset < header.next_offset

        end = log.log_end_offset
        extra = records.build_batch([(b"k", b"v", clock.time_ms(), None)])
        info = log.append(bytearray(extra), log.last_leader_epoch or 0)
        assert info.first_offset == end
        log.close()
        again = PartitionLog.open(directory, config, clock)
        try:
            assert again.recovery_stats.clean_shutdown
            expected = survived + [_stamped(extra, end)]
            assert [_masked(b) for b in _read_all(again)] == [_masked(b) for b in expected]
        finally:
            again.close()


def _stamped(batch: bytes, base_offset: int) -> bytes:
    buf = bytearray(batch)
    records.stamp_batch(buf, 0, base_offset, 0)  # the epoch is masked when compared
    return bytes(buf)
