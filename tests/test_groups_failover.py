"""Consumer groups across a controller failover, on three broker processes (broker.testing.LocalCluster).

Two group members consume six partitions and commit after every batch while a producer runs;
the controller leader (the group coordinator) is killed with kill -9 in the middle of it. Every
commit acknowledged before the kill is still there afterwards (it was committed through the Raft
log), the members find the new coordinator and rejoin keeping their partitions, and once the
killed broker is back (partition data is not replicated yet, so its partitions wait for it) the
group finishes with committed offsets equal to the log end offsets. Every wait is a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from broker.testing import LocalCluster
from client import Admin, Consumer, Producer, TopicPartition
from client.errors import TidelogError

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 6
GROUP, TOPIC = "billing", "invoices"


async def until(probe, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await probe()
        except TidelogError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def test_committed_offsets_survive_a_controller_kill_and_the_group_carries_on(tmp_path):
    with LocalCluster(3, tmp_path, settings={"group_rejoin_grace_ms": 3000}) as cluster:
        bootstrap = cluster.bootstrap_servers
        async with Admin(bootstrap_servers=bootstrap) as admin:
            await admin.create_topic(TOPIC, partitions=PARTITIONS)
            controller_id = (await admin.describe_cluster()).controller_id
        produced: dict[int, int] = defaultdict(int)
        acknowledged: dict[TopicPartition, int] = {}  # commits answered before the kill
        killed = asyncio.Event()
        stop = asyncio.Event()

        async def produce() -> None:
            async with Producer(bootstrap_servers=bootstrap, linger_ms=2, request_timeout_ms=2000,
                                delivery_timeout_ms=60_000) as producer:
                i = 0
                while not stop.is_set():
                    for p in range(PARTITIONS):
                        fut = await producer.send(TOPIC, value=b"x%d" % i, partition=p)
                        fut.add_done_callback(lambda f: f.exception() or produced.__setitem__(
                            f.result().partition, max(produced[f.result().partition], f.result().offset + 1)))
                    i += 1
                    await asyncio.sleep(0.01)
                await producer.flush()

        async def consume(consumer: Consumer) -> None:
            while not stop.is_set() or any(consumer.lag(tp) for tp in consumer.assignment()):
                batches = await consumer.getmany(timeout_ms=100)
                if not batches:
                    continue
                offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                try:
                    await consumer.commit(offsets)
                except TidelogError:
                    continue  # the coordinator moved mid-commit; the next batch commits again
                if not killed.is_set():
                    for tp, offset in offsets.items():
                        if tp in consumer.assignment():
                            acknowledged[tp] = max(acknowledged.get(tp, 0), offset)

        consumers = [Consumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP, auto_offset_reset="earliest",
                              enable_auto_commit=False, session_timeout_ms=3000, heartbeat_interval_ms=200,
                              request_timeout_ms=15_000) for _ in range(2)]
        for consumer in consumers:
            await consumer.start()
        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(consume(c)) for c in consumers]
        try:
            await until(lambda: _async(len(acknowledged) == PARTITIONS), 30, "commits for every partition")
            await until(lambda: _async([len(c.assignment()) for c in consumers] == [3, 3]), 30,
                        "the two members holding three partitions each")
            await asyncio.sleep(0.3)  # the kill lands among commits in flight
            victim = next(node for node in cluster.brokers if node.node_id == controller_id)
            before = dict(acknowledged)
            held_before = [c.assignment() for c in consumers]
            killed.set()
            victim.kill9()
            killed_at = time.monotonic()
            async with Admin(bootstrap_servers=bootstrap, request_timeout_ms=5000) as admin:
                async def new_controller():
                    description = await admin.describe_cluster()
                    return description.controller_id not in (-1, controller_id)

                await until(new_controller, 20, "a new controller")

                async def offsets_survived():
                    description = await admin.describe_group(GROUP)
                    return all(description.committed.get(tp, -1) >= offset for tp, offset in before.items())

                await until(offsets_survived, 20, "commits acknowledged before the kill, on the new coordinator")
                survived_s = time.monotonic() - killed_at
                await asyncio.to_thread(victim.restart)

                async def rejoined():
                    description = await admin.describe_group(GROUP)
                    return len(description.members) == 2 and description.state == "Stable"

                await until(rejoined, 30, "both members rejoined the new coordinator")
                print(f"controller killed: committed offsets readable on the new coordinator after {survived_s:.2f} s, "
                      f"members rejoined after {time.monotonic() - killed_at:.2f} s")
                assert [c.assignment() for c in consumers] == held_before  # rejoining moved nothing
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.wait_for(tasks[0], 60)  # the producer flushed everything

                async def caught_up():
                    description = await admin.describe_group(GROUP)
                    ends = {TopicPartition(TOPIC, p): n for p, n in produced.items()}
                    return description.committed == ends and all(v == 0 for v in description.lag.values())

                await until(caught_up, 40, "committed offsets reaching the log end offsets after the failover")
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for consumer in consumers:
                await consumer.stop()


async def _async(value):
    return value
