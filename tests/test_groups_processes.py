"""Consumer groups end to end with real processes: one broker process, three consumer processes
(tests/group_worker.py) in one group over six partitions while a producer runs.

One scenario in phases, so the processes start once: the three share the partitions two each;
kill -9 of one: its partitions move to the others within the session timeout; a fourth consumer
joins: the partitions spread again. After the producer stops: every record produced was
processed at least once, no partition was ever held by two members at once (from the members'
own assigned/revoked log lines and the kill time), and the group's committed offsets equal the
log end offsets (lag 0, as Admin.describe_group and the broker's lag metric both report). Every
wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from client import Admin, Producer, TopicPartition

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
SESSION_TIMEOUT_MS = 2000
PARTITIONS = 6
GROUP, TOPIC = "workers", "jobs"


class Worker:
    def __init__(self, bootstrap: str, path: Path):
        self.path = path
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.group_worker", bootstrap, GROUP, TOPIC, str(path), str(SESSION_TIMEOUT_MS)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(str(path) + ".err", "w"))

    def events(self) -> list[list[str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.endswith(("\n",)) or line]

    def held(self) -> set[int]:
        held: set[int] = set()
        for event in self.events():
            if event[0] == "assigned" and len(event) > 2:
                held |= {int(p) for p in event[2].split(",")}
            elif event[0] == "revoked" and len(event) > 2:
                held -= {int(p) for p in event[2].split(",")}
        return held

    def kill9(self) -> int:
        self.proc.kill()
        self.proc.wait(10)
        return time.time_ns() // 1_000_000

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def until(probe, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe() if asyncio.iscoroutinefunction(probe) else probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


def holdings(workers) -> list[set[int]]:
    return [w.held() for w in workers]


def spread_evenly(workers) -> bool:
    held = holdings(workers)
    return set().union(*held) == set(range(PARTITIONS)) and sum(map(len, held)) == PARTITIONS and \
        max(map(len, held)) - min(map(len, held)) <= 1


async def test_three_consumer_processes_share_move_and_finish_at_lag_zero(broker_factory, tmp_path):
    broker = broker_factory(metrics="127.0.0.1:0")
    bootstrap = broker.bootstrap
    async with Admin(bootstrap_servers=bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS)
    produced: dict[int, int] = defaultdict(int)  # partition -> records acknowledged
    stop_producing = asyncio.Event()

    async def produce() -> None:
        async with Producer(bootstrap_servers=bootstrap, linger_ms=5) as producer:
            i = 0
            while not stop_producing.is_set():
                futures = [await producer.send(TOPIC, value=b"job-%d" % (i + n), partition=(i + n) % PARTITIONS)
                           for n in range(30)]
                for meta in await asyncio.gather(*futures):
                    produced[meta.partition] = max(produced[meta.partition], meta.offset + 1)
                i += 30
                await asyncio.sleep(0.02)

    producer_task = asyncio.create_task(produce())
    workers = [Worker(bootstrap, tmp_path / f"w{n}.log") for n in range(3)]
    try:
        await until(lambda: spread_evenly(workers), 30, "three workers holding two partitions each")

        # kill -9 one: its partitions move to the two others within the session timeout.
        victim = workers[0]
        victim_partitions = victim.held()
        killed_at = victim.kill9()
        started = time.monotonic()
        await until(lambda: spread_evenly(workers[1:]), 15, "the killed worker's partitions moving")
        moved_after_s = time.monotonic() - started
        print(f"partitions of the killed consumer moved after {moved_after_s:.2f} s "
              f"(session_timeout_ms={SESSION_TIMEOUT_MS})")
        assert moved_after_s < SESSION_TIMEOUT_MS / 1000 + 1.5

        # A new consumer joins: the partitions spread over three again.
        workers.append(Worker(bootstrap, tmp_path / "w3.log"))
        await until(lambda: spread_evenly(workers[1:]), 30, "partitions spreading to the new worker")
        await asyncio.sleep(0.3)  # let the producer run a little with the final layout
        stop_producing.set()
        await producer_task

        # Everything produced gets processed and committed: committed == log end, lag 0.
        ends = {TopicPartition(TOPIC, p): n for p, n in produced.items()}
        async with Admin(bootstrap_servers=bootstrap) as admin:
            async def caught_up():
                description = await admin.describe_group(GROUP)
                return description if description.committed == ends else None

            description = await until(caught_up, 30, "committed offsets reaching the log end offsets")
        assert description.state == "Stable" and len(description.members) == 3
        assert all(lag == 0 for lag in description.lag.values()) and len(description.lag) == PARTITIONS
        assert sorted(tp.partition for m in description.members for tp in m.assignment) == list(range(PARTITIONS))
        metrics = _scrape(broker)
        for p in range(PARTITIONS):
            assert f'tidelog_consumer_group_lag{{group="{GROUP}",partition="{p}",topic="{TOPIC}"}} 0.0' in metrics
    finally:
        stop_producing.set()
        for worker in workers:
            worker.stop()
        if not producer_task.done():
            producer_task.cancel()

    # Every record was processed at least once.
    processed: dict[int, set[int]] = defaultdict(set)
    for worker in workers:
        for event in worker.events():
            if event[0] == "record":
                processed[int(event[2])].add(int(event[3]))
    for partition, end in produced.items():
        missing = set(range(end)) - processed[partition]
        assert not missing, f"partition {partition}: {len(missing)} records never processed"

    # No partition held by two workers at once: intervals from assigned/revoked (and the kill).
    intervals: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for index, worker in enumerate(workers):
        opened: dict[int, int] = {}
        last = killed_at if worker is victim else 2**62
        for event in worker.events():
            if event[0] in ("assigned", "revoked") and len(event) > 2:
                for p in map(int, event[2].split(",")):
                    if event[0] == "assigned":
                        opened[p] = int(event[1])
                    else:
                        intervals[p].append((opened.pop(p), int(event[1]), index))
        for p, start in opened.items():
            intervals[p].append((start, last, index))
    for partition, spans in intervals.items():
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, f"partition {partition} held by workers {a} and {b} at once"
    assert victim_partitions and all(
        any(index != 0 and start >= killed_at for start, _, index in intervals[p]) for p in victim_partitions)


def _scrape(broker) -> str:
    import re
    import urllib.request

    pattern = re.compile(r"metrics=(?P<host>[0-9.]+):(?P<port>\d+)")
    match = next(m for m in map(pattern.search, broker.lines) if m)
    with urllib.request.urlopen(f"http://{match['host']}:{match['port']}/metrics", timeout=5) as response:
        return response.read().decode()
