"""Storage events of a real broker process, seen the way an operator sees them: background
retention and segment rolls show up in /metrics (counters) and as exactly one info line per
event, a recovery after kill -9 as one `recovery` line per partition, and requests as no line
at all at the default level."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from client import Admin, Producer
from tests.test_ops_metrics import get, metrics_url, samples

pytestmark = pytest.mark.timeout(60)

RECORD_BYTES = 1000
RECORDS = 60


def wait_for(condition, what: str, timeout_s: float = 20.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)  # polling a condition with a deadline, not a synchronisation sleep


def scrape(base: str) -> dict:
    status, text = get(base + "/metrics")
    assert status == 200
    return samples(text)


def events(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if re.search(rf"\bevent={name}\b", line)]


async def produce(bootstrap: str, topic: str, count: int) -> None:
    async with Admin(bootstrap_servers=bootstrap) as admin:
        # 4 KiB segments: each holds four 1 KB records, so 60 records roll about 15 times.
        await admin.create_topic(topic, partitions=1, config={"segment.bytes": "4096", "retention.bytes": "8192"})
    async with Producer(bootstrap_servers=bootstrap, linger_ms=0) as producer:
        for i in range(count):
            await producer.send_and_wait(topic, value=b"%04d" % i + b"x" * (RECORD_BYTES - 4), partition=0)


def test_retention_and_rolls_are_counted_and_logged_once_each(broker_factory):
    proc = broker_factory(metrics="127.0.0.1:0", retention_check_interval_ms=100)
    base = metrics_url(proc)
    asyncio.run(produce(proc.bootstrap, "trimmed", RECORDS))
    part = (("partition", "0"), ("topic", "trimmed"))

    def deleted_in_lines(lines: list[str]) -> int:
        return sum(int(re.search(r"retention deleted (\d+) segments", line).group(1))
                   for line in events(lines, "segments_deleted"))

    def settled():
        """A scrape whose counters match the log lines (output reaches proc.lines through a
        thread, so the two may differ for a moment; a line logged twice never matches)."""
        lines = proc.lines
        values = scrape(base)
        deleted = values[("tidelog_retention_segments_deleted_total", ())]
        if deleted > 0 and deleted_in_lines(lines) == deleted and \
                len(events(lines, "segment_rolled")) == values[("tidelog_log_segments_rolled_total", ())]:
            return values, lines
        return None

    values, lines = wait_for(settled, "retention deleting old segments, counted and logged")
    deleted = values[("tidelog_retention_segments_deleted_total", ())]
    rolled = values[("tidelog_log_segments_rolled_total", ())]
    assert rolled >= RECORDS * RECORD_BYTES // 4096 - 1
    # Every byte appended is either still in the log or was deleted by retention.
    appended = values[("tidelog_topic_bytes_in_total", (("topic", "trimmed"),))]
    assert values[("tidelog_retention_deleted_bytes_total", ())] + values[("tidelog_log_size_bytes", part)] == appended
    assert values[("tidelog_log_start_offset", part)] > 0
    assert values[("tidelog_log_segments", part)] == rolled + 1 - deleted
    assert all("level=info" in line for line in events(lines, "segments_deleted") + events(lines, "segment_rolled"))
    # Sixty produce requests left no line per request: besides the storage events, only the
    # start-up and topic lines are there.
    others = [line for line in lines if not re.search(r"\bevent=(segment_rolled|segments_deleted)\b", line)]
    assert len(others) < RECORDS // 3, "\n".join(others)
    assert proc.terminate() == 0


def test_recovery_after_kill9_is_one_line_per_partition_and_a_gauge(broker_factory):
    proc = broker_factory(metrics="127.0.0.1:0")

    async def traffic() -> None:
        async with Admin(bootstrap_servers=proc.bootstrap) as admin:
            await admin.create_topic("crashy", partitions=3)
        async with Producer(bootstrap_servers=proc.bootstrap) as producer:
            for i in range(30):
                await producer.send_and_wait("crashy", value=b"v%d" % i, partition=i % 3)

    asyncio.run(traffic())
    proc.kill9()
    proc.restart()
    recovered = events(proc.lines_since_start(), "recovery")
    assert sorted(re.search(r"\bdir=(\S+)", line).group(1) for line in recovered) == ["crashy-0", "crashy-1", "crashy-2"]
    assert all("level=info" in line for line in recovered)
    values = scrape(metrics_url_since_start(proc))
    assert values[("tidelog_partitions_recovered", ())] == 3
    assert proc.terminate() == 0


def metrics_url_since_start(proc) -> str:
    """The metrics address of the latest start (port 0 picks a new one on each start)."""
    match = next(m for m in map(re.compile(r"\bmetrics=(?P<host>[^\s:]+):(?P<port>\d+)").search,
                                proc.lines_since_start()) if m)
    return f"http://{match['host']}:{match['port']}"
