"""Crashes the fuzz suite found, each as its smallest input. Strict xfail while unfixed: when the
owner fixes one the test passes, strict xfail turns that into a failure, and the marker goes (all
of those below are fixed: they stay as plain regression tests)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import crc32c
import msgpack
import pytest

from broker.raft.messages import Entry, EntryKind
from broker.raft.persist import SNAPSHOT_NAME, WAL_NAME, RaftStorage, RaftStorageError
from broker.raft.state import HardState, Ready, SnapshotMeta
from client.protocol import records
from storage import LogConfig, ManualClock, PartitionLog
from storage.files import CHECKPOINT_FILE

pytestmark = pytest.mark.timeout(30)

# The first three were found against the single-node metadata log the Raft quorum replaced
# (LocalMetadataLog, since deleted); they are kept, with the same inputs, against the Raft WAL.
_WRITTEN = (Entry(1, 1, EntryKind.NOOP, b""), Entry(1, 2, EntryKind.NORMAL, b'["delete_topic","a"]'))


def _raft_wal_with_tail(directory: Path, tail: bytes) -> Path:
    storage = RaftStorage(directory, fsync=False)
    storage.load()
    storage.persist(Ready(hard_state=HardState(1, 1, 2), entries=_WRITTEN))
    storage.close()
    with open(directory / WAL_NAME, "ab") as f:
        f.write(tail)
    return directory


def _assert_tail_cut_and_appends_continue(directory: Path, tail: bytes) -> None:
    storage = RaftStorage(directory, fsync=False)
    state = storage.load()
    try:
        assert state.entries == _WRITTEN and state.hard_state == HardState(1, 1, 2)
        assert storage.tail_bytes_cut == len(tail)
        storage.persist(Ready(hard_state=HardState(2, None, 2), entries=(Entry(2, 3, EntryKind.NOOP, b""),)))
    finally:
        storage.close()
    storage = RaftStorage(directory, fsync=False)
    try:
        again = storage.load()
        assert again.entries == _WRITTEN + (Entry(2, 3, EntryKind.NOOP, b""),) and storage.tail_bytes_cut == 0
    finally:
        storage.close()


def _crc_valid_frame(body: bytes) -> bytes:
    return struct.pack(">II", len(body), crc32c.crc32c(body)) + body


def test_raft_wal_load_survives_a_zero_filled_tail(tmp_path):
    # 8 zero bytes are a frame of length 0 whose CRC-32C (of b"") is 0: it passes the CRC check.
    tail = b"\x00" * 8
    _assert_tail_cut_and_appends_continue(_raft_wal_with_tail(tmp_path, tail), tail)


def test_raft_wal_load_survives_a_crc_valid_frame_that_is_not_msgpack(tmp_path):
    tail = _crc_valid_frame(b"\xc1")  # 0xc1 is never valid msgpack
    _assert_tail_cut_and_appends_continue(_raft_wal_with_tail(tmp_path, tail), tail)


def test_raft_wal_load_survives_a_crc_valid_frame_that_is_not_a_record(tmp_path):
    tail = _crc_valid_frame(msgpack.packb(1))  # valid msgpack, but an int rather than a record
    _assert_tail_cut_and_appends_continue(_raft_wal_with_tail(tmp_path, tail), tail)


def _partition_with_checkpoint(directory: Path, checkpoint_text: str, keep_logs: bool = True) -> None:
    log = PartitionLog.open(directory, LogConfig(), ManualClock())
    log.append(bytearray(records.build_batch([(None, b"v", 1, None)])), 0)
    log._release()  # unclean stop
    if not keep_logs:
        for path in directory.iterdir():
            if path.suffix in (".log", ".index", ".timeindex"):
                path.unlink()
    (directory / CHECKPOINT_FILE).write_text(checkpoint_text)


def _checkpoint(recovery_point: int, log_start_offset: int, restart_at: str) -> str:
    return (f"tidelog-partition-checkpoint 1\nrecovery_point {recovery_point}\n"
            f"log_start_offset {log_start_offset}\nrestart_at {restart_at}")


@pytest.mark.parametrize("text, keep_logs", [
    # One garbled byte (the '\n' after "restart_at -" became '5') turns "no restart" into restart_at=-5.
    (_checkpoint(0, 0, "-5"), True),
    (_checkpoint(0, 0, str(10**25)), True),
    (_checkpoint(0, -1, "-"), False),
], ids=["restart_at_negative", "restart_at_past_20_digits", "log_start_negative_without_segments"])
def test_out_of_range_checkpoint_values_do_not_break_the_partition(text, keep_logs):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name) / "t-0"
        _partition_with_checkpoint(directory, text, keep_logs)
        for _ in range(2):  # open, append, crash; and once more
            log = PartitionLog.open(directory, LogConfig(), ManualClock())
            assert 0 <= log.log_start_offset < 2**63
            log.append(bytearray(records.build_batch([(None, b"w", 2, None)])), 0)
            log._release()


def test_raft_snapshot_with_a_flipped_index_bit_is_refused(tmp_path):
    # Found by test_fuzz_metadata.py: the snapshot's CRC covered only its data, so one flipped bit
    # in the index field loaded a snapshot at index 2**56 + 1 and silently dropped the log after it.
    storage = RaftStorage(tmp_path, fsync=False)
    storage.load()
    storage.persist(Ready(hard_state=HardState(1, 1, 2), entries=_WRITTEN))
    storage.save_snapshot(SnapshotMeta(1, 1), b"image")
    storage.close()
    snapshot = bytearray((tmp_path / SNAPSHOT_NAME).read_bytes())
    snapshot[8] ^= 1  # the top byte of the index
    (tmp_path / SNAPSHOT_NAME).write_bytes(bytes(snapshot))
    storage = RaftStorage(tmp_path, fsync=False)
    try:
        with pytest.raises(RaftStorageError, match="CRC"):
            storage.load()
    finally:
        storage.close()


def test_raft_snapshot_in_the_v1_format_still_loads(tmp_path):
    header = struct.pack(">8sQQI", b"TLRAFTS1", 4, 2, crc32c.crc32c(b"image"))
    (tmp_path / SNAPSHOT_NAME).write_bytes(header + b"image")
    storage = RaftStorage(tmp_path, fsync=False)
    try:
        state = storage.load()
        assert (state.snapshot.meta.index, state.snapshot.meta.term, state.snapshot.data) == (4, 2, b"image")
    finally:
        storage.close()
