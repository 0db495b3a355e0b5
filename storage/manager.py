"""LogManager: every partition log under one data directory, one sub-directory per
topic-partition named "<topic>-<partition>".

The data directory is locked (flock on ".lock") so two brokers can never write the same logs.
Directories ending in ".deleting" are partitions whose deletion a crash interrupted; open_all
finishes removing them.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .clock import Clock, SystemClock
from .config import LogConfig
from .errors import StorageError
from .files import DELETING_SUFFIX, fsync_dir, os_error_text
from .log import EventCallback, PartitionLog

LOCK_FILE = ".lock"
# Kafka's legal topic names: a directory name on every filesystem, and unambiguous with "-<n>".
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PARTITION_DIR = re.compile(r"(?P<topic>[A-Za-z0-9._-]{1,249})-(?P<partition>0|[1-9][0-9]{0,8})")
_SYSTEM_CLOCK = SystemClock()

TopicPartition = tuple[str, int]


def partition_dir_name(topic: str, partition: int) -> str:
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise StorageError(f"illegal topic name {topic!r}: use 1-249 of [A-Za-z0-9._-]")
    if type(partition) is not int or not 0 <= partition < 10**9:
        raise StorageError(f"illegal partition {partition!r} for topic {topic!r}")
    return f"{topic}-{partition}"


class LogManager:
    def __init__(self, data_dir: Path, default_config: LogConfig, clock: Clock = _SYSTEM_CLOCK,
                 on_event: EventCallback | None = None):
        self.data_dir = Path(data_dir)
        self.default_config = default_config
        self._clock = clock
        self._on_event = on_event
        self._logs: dict[TopicPartition, PartitionLog] = {}
        self._lock_fd = self._lock_data_dir()

    def _lock_data_dir(self) -> int:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open data directory {self.data_dir}: {os_error_text(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"data directory {self.data_dir} is in use by another process ({os_error_text(exc)})") from exc
        return fd

    def open_all(self, config_for: Callable[[str, int], LogConfig | None] | None = None,
                 recovery_threads: int = 1) -> None:
        """Open (and recover) every partition directory. `config_for` supplies per-topic settings
        (None: the default). With recovery_threads > 1 partitions recover in parallel threads;
        each PartitionLog touches only its own directory, so that is safe."""
        found: list[tuple[TopicPartition, Path]] = []
        for entry in sorted(os.scandir(self.data_dir), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name.endswith(DELETING_SUFFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            match = _PARTITION_DIR.fullmatch(entry.name)
            if match and (match["topic"], int(match["partition"])) not in self._logs:
                found.append(((match["topic"], int(match["partition"])), Path(entry.path)))

        def open_one(item: tuple[TopicPartition, Path]) -> PartitionLog:
            (topic, partition), path = item
            config = (config_for(topic, partition) if config_for else None) or self.default_config
            return PartitionLog.open(path, config, self._clock, self._on_event)

        if recovery_threads > 1 and len(found) > 1:
            with ThreadPoolExecutor(recovery_threads, thread_name_prefix="log-recovery") as pool:
                logs = list(pool.map(open_one, found))
        else:
            logs = [open_one(item) for item in found]
        for (key, _), log in zip(found, logs):
            self._logs[key] = log
        fsync_dir(self.data_dir)

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def create(self, topic: str, partition: int, config: LogConfig | None = None) -> PartitionLog:
        """A new, empty partition log; refuses one that is already open."""
        key = (topic, partition)
        if key in self._logs:
            raise StorageError(f"partition {topic}-{partition} already exists in {self.data_dir}")
        path = self.data_dir / partition_dir_name(topic, partition)
        log = PartitionLog.open(path, config or self.default_config, self._clock, self._on_event)
        self._logs[key] = log
        return log

    def get_or_create(self, topic: str, partition: int, config: LogConfig | None = None) -> PartitionLog:
        return self._logs.get((topic, partition)) or self.create(topic, partition, config)

    def delete(self, topic: str, partition: int) -> None:
        log = self._logs.pop((topic, partition), None)
        if log is None:
            raise StorageError(f"no partition {topic}-{partition} in {self.data_dir}")
        log.delete()

    def partitions(self) -> dict[TopicPartition, PartitionLog]:
        return dict(self._logs)

    def enforce_retention(self, now_ms: int | None = None) -> dict[TopicPartition, list[int]]:
        """Run retention on every log; returns the deleted base offsets per partition that lost any."""
        now_ms = self._clock.time_ms() if now_ms is None else now_ms
        deleted = {}
        for key, log in self._logs.items():
            gone = log.enforce_retention(now_ms)
            if gone:
                deleted[key] = gone
        return deleted

    def flush_all(self) -> None:
        for log in self._logs.values():
            log.flush()

    def maybe_flush_all(self) -> int:
        """The flush_ms policy for every log (a broker timer calls this); returns how many flushed."""
        return sum(log.maybe_flush() for log in self._logs.values())

    def close(self) -> None:
        """Close every log (each writes its clean-shutdown marker), then release the lock. Keeps
        closing after a failure so one bad disk does not leave the other logs unclean."""
        first_error: Exception | None = None
        for log in self._logs.values():
            try:
                log.close()
            except StorageError as exc:
                first_error = first_error or exc
        self._logs.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if first_error is not None:
            raise first_error
