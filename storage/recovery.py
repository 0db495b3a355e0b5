"""Opening a partition directory: find the segments, trust what is known durable, re-validate
the rest, cut at the first bad byte, rebuild indexes.

Decisions (see also storage/__init__.py):
- Recovery point: the checkpoint's recovery_point names the earliest segment not known
  flushed. A segment is flushed (log and both indexes fsynced) when it is sealed by a roll, and
  the checkpoint moves to the new active segment right after, so in steady state only the active
  segment is re-validated. A missing or unreadable checkpoint means "trust nothing": every
  segment is re-validated.
- Segments below the recovery point (and every segment after a clean shutdown) keep their
  indexes after cheap checks (structure, last entries, tail against the indexing rule); any doubt
  turns into a full re-validation of that segment.
- A log is a prefix: at the first torn or corrupt byte, or a segment that does not continue the
  previous one's offsets, everything after is deleted (the highest segment first, so a crash
  during recovery still leaves a prefix).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import PartitionCheckpoint, read_checkpoint, write_checkpoint
from .clock import Clock
from .config import LogConfig
from .errors import StorageError
from .files import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    TMP_SUFFIX,
    fsync_dir,
    os_error_text,
    parse_segment_file_name,
    segment_file_name,
    unlink_quietly,
)
from .segment import Segment


@dataclass
class RecoveryStats:
    """What opening a partition did, for the broker's log line and metrics."""

    clean_shutdown: bool
    segments_loaded: int = 0
    segments_validated: int = 0
    bytes_validated: int = 0
    indexes_rebuilt: int = 0
    bytes_truncated: int = 0
    segments_deleted: int = 0
    stray_files_removed: int = 0
    cut_reason: str | None = None
    index_problems: list[str] = field(default_factory=list)
    duration_ms: int = 0


@dataclass
class LoadedLog:
    segments: list[Segment]
    checkpoint: PartitionCheckpoint
    stats: RecoveryStats


def load_log(directory: Path, config: LogConfig, clock: Clock, clean_shutdown: bool) -> LoadedLog:
    """Open every segment of `directory`, recovering as needed; the last segment is the active one."""
    started_ms = clock.monotonic_ms()
    stats = RecoveryStats(clean_shutdown)
    stored = read_checkpoint(directory)
    checkpoint = stored or PartitionCheckpoint()
    bases = _list_segments(directory, stats)
    if checkpoint.restart_at is not None:
        segments, checkpoint = _finish_restart(directory, config, bases, checkpoint, stats)
    elif not bases:
        segments = [Segment.create(directory, checkpoint.log_start_offset, config)]
        fsync_dir(directory)
    else:
        first_unflushed = len(bases) if clean_shutdown else _first_unflushed(bases, checkpoint, stored is None)
        segments = _load_segments(directory, config, clock, bases, first_unflushed, stats)
    checkpoint = _settle(segments, checkpoint)
    if checkpoint != stored:
        write_checkpoint(directory, checkpoint)
    stats.segments_loaded = len(segments)
    stats.duration_ms = clock.monotonic_ms() - started_ms
    return LoadedLog(segments, checkpoint, stats)


def _list_segments(directory: Path, stats: RecoveryStats) -> list[int]:
    """Sorted base offsets of the .log files; removes temp files and indexes without a log."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise StorageError(f"cannot list {directory}: {os_error_text(exc)}") from exc
    logs, orphans = set(), []
    for name in names:
        parsed = parse_segment_file_name(name)
        if parsed is not None and parsed[1] == LOG_SUFFIX:
            logs.add(parsed[0])
    for name in names:
        parsed = parse_segment_file_name(name)
        if name.endswith(TMP_SUFFIX) or (parsed is not None and parsed[1] != LOG_SUFFIX and parsed[0] not in logs):
            orphans.append(name)
    for name in orphans:
        stats.stray_files_removed += unlink_quietly(directory / name)
    if orphans:
        fsync_dir(directory)
    return sorted(logs)


def _first_unflushed(bases: list[int], checkpoint: PartitionCheckpoint, missing: bool) -> int:
    """Index of the segment holding the recovery point: it and all later ones are re-validated."""
    if missing:
        return 0
    first = 0
    for i, base in enumerate(bases):
        if base <= checkpoint.recovery_point:
            first = i
    return first


def _load_segments(directory: Path, config: LogConfig, clock: Clock, bases: list[int],
                   first_unflushed: int, stats: RecoveryStats) -> list[Segment]:
    segments: list[Segment] = []
    doomed: list[int] = []
    now_ms = clock.time_ms()
    for i, base in enumerate(bases):
        previous = segments[-1] if segments else None
        if stats.cut_reason is not None:
            doomed.append(base)
            continue
        if previous is not None and base != previous.next_offset:
            # Offsets across segments are contiguous: a segment that does not continue is a cut point.
            stats.cut_reason = f"segment {base} does not continue the previous one, which ends at {previous.next_offset}"
            doomed.append(base)
            continue
        segment = Segment.open_existing(directory, base, config)
        is_last = i == len(bases) - 1
        problem = segment.load_indexes(sealed=not is_last, now_ms=now_ms) if i < first_unflushed else "unflushed"
        if problem is not None:
            if problem != "unflushed":
                stats.index_problems.append(f"{segment.log_path}: {problem}")
            _revalidate(segment, previous, now_ms, stats)
            if not is_last and stats.cut_reason is None:
                segment.seal()  # re-validated and now fsynced: the recovery point may pass it
        segments.append(segment)
    _delete_segments(directory, reversed(doomed), stats)
    return segments


def _revalidate(segment: Segment, previous: Segment | None, now_ms: int, stats: RecoveryStats) -> None:
    size_before = segment.size_bytes
    cut = segment.rebuild(previous.last_epoch if previous else None, now_ms)
    stats.segments_validated += 1
    stats.indexes_rebuilt += 1
    stats.bytes_validated += segment.size_bytes
    stats.bytes_truncated += size_before - segment.size_bytes
    if cut is not None:
        stats.cut_reason = cut


def _delete_segments(directory: Path, bases, stats: RecoveryStats) -> None:
    deleted = False
    for base in bases:
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            deleted |= unlink_quietly(directory / segment_file_name(base, suffix))
        stats.segments_deleted += 1
    if deleted:
        fsync_dir(directory)


def _finish_restart(directory: Path, config: LogConfig, bases: list[int], checkpoint: PartitionCheckpoint,
                    stats: RecoveryStats) -> tuple[list[Segment], PartitionCheckpoint]:
    """A crash interrupted truncate_fully_and_start_at: finish it (drop everything, start empty)."""
    start = checkpoint.restart_at
    _delete_segments(directory, reversed(bases), stats)
    segments = [Segment.create(directory, start, config)]
    fsync_dir(directory)
    return segments, PartitionCheckpoint(recovery_point=start, log_start_offset=start)


def _settle(segments: list[Segment], checkpoint: PartitionCheckpoint) -> PartitionCheckpoint:
    """Make the last segment the writable one and move the recovery point to it: every segment
    before it is now sealed (fsynced at its roll, or re-validated and fsynced just now)."""
    active = segments[-1]
    if active.sealed:
        active.offset_index.unseal()
        active.time_index.unseal()
        active.sealed = False
    return PartitionCheckpoint(recovery_point=active.base_offset, log_start_offset=segments[0].base_offset)
