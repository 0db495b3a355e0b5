"""The partition checkpoint file and the clean-shutdown marker, both in the partition directory.

partition.checkpoint (rewritten atomically, rarely: on roll, truncation, log-start moves) holds
  recovery_point    segments below the one holding this offset are flushed and their indexes
                    complete; after an unclean stop recovery re-validates from that segment on
  log_start_offset  first offset still readable (delete_records_before can move it inside a segment)
  restart_at        set while truncate_fully_and_start_at runs, so a crash midway finishes the job

The marker lives next to it (per partition, so each PartitionLog opens and closes on its own):
written last by close(), removed first by open(); recovery runs only when it is absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import StorageError
from .files import CHECKPOINT_FILE, CLEAN_SHUTDOWN_MARKER, fsync_dir, os_error_text, write_file_atomically

_MAGIC_LINE = "tidelog-partition-checkpoint 1"
OFFSET_MAX = 2**63 - 1  # offsets are int64 in the batch header


@dataclass(frozen=True)
class PartitionCheckpoint:
    recovery_point: int = 0
    log_start_offset: int = 0
    restart_at: int | None = None

    def encode(self) -> bytes:
        restart = "-" if self.restart_at is None else str(self.restart_at)
        return (
            f"{_MAGIC_LINE}\nrecovery_point {self.recovery_point}\n"
            f"log_start_offset {self.log_start_offset}\nrestart_at {restart}\n"
        ).encode()

    @classmethod
    def decode(cls, text: str) -> PartitionCheckpoint | None:
        """None for anything unexpected: the caller then trusts nothing (recovery point 0)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[0] != _MAGIC_LINE:
            return None
        fields = dict(line.split(" ", 1) for line in lines[1:4] if " " in line)
        try:
            restart = fields["restart_at"]
            checkpoint = cls(
                recovery_point=int(fields["recovery_point"]),
                log_start_offset=int(fields["log_start_offset"]),
                restart_at=None if restart == "-" else int(restart),
            )
        except (KeyError, ValueError):
            return None
        # A garbled digit must not become an offset no segment file name can hold (20 digits,
        # non-negative): such a checkpoint is as good as none, and recovery then trusts nothing.
        offsets = (checkpoint.recovery_point, checkpoint.log_start_offset, checkpoint.restart_at or 0)
        if not all(0 <= offset <= OFFSET_MAX for offset in offsets):
            return None
        return checkpoint

    def with_changes(self, **changes) -> PartitionCheckpoint:
        return replace(self, **changes)


def read_checkpoint(directory: Path) -> PartitionCheckpoint | None:
    try:
        text = (directory / CHECKPOINT_FILE).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return None
    return PartitionCheckpoint.decode(text)


def write_checkpoint(directory: Path, checkpoint: PartitionCheckpoint) -> None:
    write_file_atomically(directory / CHECKPOINT_FILE, checkpoint.encode())


def take_clean_shutdown_marker(directory: Path) -> bool:
    """Remove the marker if present (durably, before any write can follow); True if it was there."""
    path = directory / CLEAN_SHUTDOWN_MARKER
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {os_error_text(exc)}") from exc
    fsync_dir(directory)
    return True


def write_clean_shutdown_marker(directory: Path) -> None:
    """Called after everything else is durable, so the marker can only promise what is true."""
    path = directory / CLEAN_SHUTDOWN_MARKER
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {os_error_text(exc)}") from exc
    fsync_dir(directory)
