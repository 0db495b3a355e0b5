"""Crashes the fuzz suite found, each as its smallest input. Strict xfail while unfixed: when the
owner fixes one the test passes, strict xfail turns that into a failure, and the marker goes."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import crc32c
import msgpack
import pytest

from broker.metadata import LocalController, LocalMetadataLog
from client.protocol import records
from storage import LogConfig, ManualClock, PartitionLog
from storage.files import CHECKPOINT_FILE

pytestmark = pytest.mark.timeout(30)


def _metadata_log_with_tail(directory: Path, tail: bytes) -> Path:
    log = LocalMetadataLog(directory)
    log.append([["delete_topic", "a"]])
    log.close()
    with open(directory / LocalMetadataLog.FILE_NAME, "ab") as f:
        f.write(tail)
    return directory


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "broker/metadata.py LocalMetadataLog.replay: 8 zero bytes are a frame with length 0 and "
    "CRC-32C(b'') == 0, so the CRC check passes and msgpack.unpackb(b'') raises ValueError "
    "('Unpack failed: incomplete input'); a zero-filled tail after a crash stops the controller from starting"))
def test_metadata_replay_survives_a_zero_filled_tail(tmp_path):
    log = LocalMetadataLog(_metadata_log_with_tail(tmp_path, b"\x00" * 8))
    try:
        assert log.replay() == [["delete_topic", "a"]]
    finally:
        log.close()


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "broker/metadata.py LocalMetadataLog.replay: a frame whose CRC matches but whose body is not one "
    "msgpack object (here b'\\xc1', never valid msgpack) makes msgpack.unpackb raise out of replay"))
def test_metadata_replay_survives_a_crc_valid_frame_that_is_not_msgpack(tmp_path):
    body = b"\xc1"
    log = LocalMetadataLog(_metadata_log_with_tail(tmp_path, struct.pack(">II", 1, crc32c.crc32c(body)) + body))
    try:
        assert log.replay() == [["delete_topic", "a"]]
    finally:
        log.close()


@pytest.mark.xfail(strict=True, raises=TypeError, reason=(
    "broker/metadata.py: replay returns any CRC-valid msgpack object as a record (here the int 1), and "
    "LocalController.__init__ then raises TypeError in MetadataImage.apply (record[0] on an int)"))
def test_controller_starts_when_the_log_holds_a_crc_valid_non_record(tmp_path):
    body = msgpack.packb(1)
    _metadata_log_with_tail(tmp_path, struct.pack(">II", len(body), crc32c.crc32c(body)) + body)
    controller = LocalController(tmp_path, node_id=1)
    controller.close()


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
