"""File names and the few crash-safe file operations every other module builds on.

A name only survives a power loss once its directory is fsynced, so every create, rename and
delete here is followed by `fsync_dir` at the caller's chosen point (once per batch of changes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import StorageError

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX)
BASE_OFFSET_DIGITS = 20
TMP_SUFFIX = ".tmp"
DELETING_SUFFIX = ".deleting"  # a partition directory renamed aside on its way out
CLEAN_SHUTDOWN_MARKER = "clean-shutdown"
CHECKPOINT_FILE = "partition.checkpoint"


def segment_file_name(base_offset: int, suffix: str) -> str:
    """Segment files are named by base offset in 20 digits, so a plain sort is offset order."""
    return f"{base_offset:0{BASE_OFFSET_DIGITS}d}{suffix}"


def parse_segment_file_name(name: str) -> tuple[int, str] | None:
    """(base_offset, suffix) for a segment file name, or None for any other file."""
    for suffix in SEGMENT_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if len(stem) == BASE_OFFSET_DIGITS and stem.isdigit():
                return int(stem), suffix
    return None


def fsync_dir(directory: Path) -> None:
    """Make creates, renames and deletes inside `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StorageError(f"cannot open directory {directory} to fsync it: {exc}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageError(f"fsync of directory {directory} failed: {exc}") from exc
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new content, never a mix."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unlink_quietly(path: Path) -> bool:
    """Remove a file that may already be gone; True if it existed."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc


def os_error_text(exc: OSError) -> str:
    """'[Errno 28] ENOSPC No space left on device' style text for error messages."""
    code = exc.errno
    name = errno.errorcode.get(code, "?") if code is not None else "?"
    return f"[Errno {code}] {name} {exc.strerror or exc}"
