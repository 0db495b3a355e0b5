"""Consumer groups through the SDK and the CLI against a real broker process: commits refused for
a stale generation and an unknown member (clear errors), the rebalance listener, committed() and
lag(), static membership (a restart moves nothing), max_poll_interval_ms removing a consumer that
stops polling, a consumer outside the membership committing, and `tidelog groups list|describe`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from client import Admin, Consumer, ConsumerRebalanceListener, Producer, TopicPartition
from client.connection import Connection
from client.consumer import CommitFailedError
from client.errors import GroupIdNotFoundError, InvalidSessionTimeoutError
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    HeartbeatRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
)

pytestmark = pytest.mark.timeout(60)

FAST = dict(session_timeout_ms=1500, heartbeat_interval_ms=100, auto_offset_reset="earliest")


async def until(probe, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def setup(bootstrap: str, topic: str, partitions: int, records: int = 0) -> None:
    async with Admin(bootstrap_servers=bootstrap) as admin:
        await admin.create_topic(topic, partitions=partitions)
    if records:
        async with Producer(bootstrap_servers=bootstrap) as producer:
            for i in range(records):
                await producer.send(topic, value=b"%d" % i, partition=i % partitions)
            await producer.flush()


class Recorder(ConsumerRebalanceListener):
    def __init__(self):
        self.events: list[tuple[str, set]] = []

    async def on_partitions_revoked(self, revoked):
        self.events.append(("revoked", {tp.partition for tp in revoked}))

    def on_partitions_assigned(self, assigned):
        self.events.append(("assigned", {tp.partition for tp in assigned}))


async def test_stale_generation_and_unknown_member_commits_are_refused_clearly(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "orders", 2, records=10)
    async with Consumer("orders", bootstrap_servers=bootstrap, group_id="g1", **FAST) as first:
        group = first._group
        member, old_generation = group.member_id, group.generation
        async with Consumer("orders", bootstrap_servers=bootstrap, group_id="g1", **FAST) as second:
            await until(lambda: _async(len(first.assignment()) == 1 and len(second.assignment()) == 1), 10,
                        "the two members sharing the partitions")
            assert group.generation > old_generation
            conn = await Connection.open("127.0.0.1", broker_process.port)
            try:
                def commit(member_id, generation):
                    return conn.request(OffsetCommitRequest(group_id="g1", member_id=member_id, generation=generation,
                                                            topics=[OffsetCommitTopic("orders", [OffsetCommitPartition(0, 3)])]))

                stale = await commit(member, old_generation)
                assert stale.error_code == ErrorCode.ILLEGAL_GENERATION
                assert f"commit with generation {old_generation} refused" in stale.error_message
                assert "the group rebalanced" in stale.error_message
                unknown = await commit("ghost-1", group.generation)
                assert unknown.error_code == ErrorCode.UNKNOWN_MEMBER_ID
                assert "'ghost-1' is not in group 'g1'" in unknown.error_message
                outsider = await commit("", -1)
                assert outsider.error_code == ErrorCode.UNKNOWN_MEMBER_ID
                assert "accepted only while it has none" in outsider.error_message
                beat = await conn.request(HeartbeatRequest(group_id="g1", member_id="ghost-1", generation=1))
                assert beat.error_code == ErrorCode.UNKNOWN_MEMBER_ID
            finally:
                conn.close()
            assert await first.committed(TopicPartition("orders", 0)) is None  # nothing refused was written
            # The SDK itself: committing a partition this member does not hold is dropped, and a
            # commit it may make goes through.
            mine = next(iter(first.assignment()))
            await first.commit({mine: 4, TopicPartition("orders", 1 - mine.partition): 5})
            assert await first.committed(mine) == 4
            assert await first.committed(TopicPartition("orders", 1 - mine.partition)) != 5


async def test_listener_committed_and_lag(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "events", 4, records=40)
    first_events, second_events = Recorder(), Recorder()
    first = Consumer(bootstrap_servers=bootstrap, group_id="g2", enable_auto_commit=False, **FAST)
    first.subscribe(["events"], listener=first_events)
    await first.start()
    try:
        assert first_events.events == [("assigned", {0, 1, 2, 3})]
        records = []
        while len(records) < 40:
            for batch in (await first.getmany(timeout_ms=1000)).values():
                records += batch
        assert all(first.lag(tp) == 0 for tp in first.assignment())
        await first.commit()
        assert await first.committed(TopicPartition("events", 2)) == 10
        second = Consumer(bootstrap_servers=bootstrap, group_id="g2", enable_auto_commit=False, **FAST)
        second.subscribe(["events"], listener=second_events)
        await second.start()
        try:
            await until(lambda: _poll_both(first, second, 2), 10, "the second member getting its two partitions")
            moved = second_events.events[-1][1]
            assert ("revoked", moved) in first_events.events  # revoked from the first before assigned here
            for tp in second.assignment():
                assert await second.position(tp) == 10  # starts at the committed offset
        finally:
            await second.stop()
        assert second_events.events[-1] == ("revoked", moved)  # stop() revokes before leaving
    finally:
        await first.stop()


async def test_static_member_restart_moves_nothing(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "static", 4)
    settings = dict(bootstrap_servers=bootstrap, group_id="g3", **{**FAST, "session_timeout_ms": 10_000})
    a = Consumer("static", group_instance_id="host-a", **settings)
    b = Consumer("static", group_instance_id="host-b", **settings)
    await a.start()
    await b.start()
    try:
        await until(lambda: _poll_both(a, b, 2), 10, "two static members sharing four partitions")
        held = a.assignment()
        async with Admin(bootstrap_servers=bootstrap) as admin:
            generation = (await admin.describe_group("g3")).generation
            await a.stop()  # a static member does not leave: its partitions wait for it
            a = Consumer("static", group_instance_id="host-a", **settings)
            await a.start()
            assert a.assignment() == held
            description = await admin.describe_group("g3")
            assert description.generation == generation and len(description.members) == 2
            assert {m.group_instance_id for m in description.members} == {"host-a", "host-b"}
            assert b.assignment() == {TopicPartition("static", p) for p in range(4)} - held
    finally:
        await a.stop()
        await b.stop()


async def test_a_consumer_that_stops_polling_leaves_and_rejoins_at_its_next_poll(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "slow", 2)
    a = Consumer("slow", bootstrap_servers=bootstrap, group_id="g4", max_poll_interval_ms=800, **FAST)
    b = Consumer("slow", bootstrap_servers=bootstrap, group_id="g4", **FAST)
    await a.start()
    await b.start()
    try:
        await until(lambda: _poll_both(a, b, 1), 10, "one partition each")
        async def b_has_both():  # a does not poll: after max_poll_interval_ms it leaves
            await b.getmany(timeout_ms=20)
            return len(b.assignment()) == 2 and not a.assignment()

        await until(b_has_both, 10, "the stuck consumer's partition moving")
        await until(lambda: _poll_both(a, b, 1), 10, "the consumer rejoining once it polls again")
    finally:
        await a.stop()
        await b.stop()


async def test_a_consumer_outside_the_membership_commits_and_reads_back(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "manual", 1)
    tp = TopicPartition("manual", 0)
    async with Consumer(bootstrap_servers=bootstrap, group_id="g5") as consumer:
        consumer.assign([tp])
        await consumer.commit({tp: 7})
        assert await consumer.committed(tp) == 7
        with pytest.raises(ValueError, match="non-negative int"):
            await consumer.commit({tp: -3})
    with pytest.raises(InvalidSessionTimeoutError, match="session_timeout_ms 500 is outside the broker's range"):
        await Consumer("manual", bootstrap_servers=bootstrap, group_id="g5", session_timeout_ms=500,
                       heartbeat_interval_ms=100).start()
    async with Admin(bootstrap_servers=bootstrap) as admin:
        description = await admin.describe_group("g5")
        assert description.state == "Empty" and description.committed == {tp: 7}
        with pytest.raises(GroupIdNotFoundError, match="'nope' has no members and no committed offsets"):
            await admin.describe_group("nope")


async def test_cli_groups_list_and_describe(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "cli", 2, records=6)
    async with Consumer("cli", bootstrap_servers=bootstrap, group_id="reporting", **FAST) as consumer:
        while sum(len(v) for v in (await consumer.getmany(timeout_ms=500)).values()) == 0:
            pass
        await consumer.commit()
        listed = await _tidelog("groups", "list", bootstrap=bootstrap)
        assert listed.returncode == 0 and listed.stdout.decode().split() == ["reporting"]
        described = await _tidelog("groups", "describe", "reporting", bootstrap=bootstrap)
        out = described.stdout.decode()
        assert described.returncode == 0, described.stderr
        assert "group reporting  state Stable" in out and "members 1" in out
        assert consumer._group.member_id in out
        missing = await _tidelog("groups", "describe", "nope", bootstrap=bootstrap)
        assert missing.returncode == 1 and b"GROUP_ID_NOT_FOUND" in missing.stderr


async def test_commit_of_a_removed_member_raises_commit_failed(broker_process):
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "kicked", 1)
    consumer = Consumer("kicked", bootstrap_servers=bootstrap, group_id="g6", enable_auto_commit=False, **FAST)
    await consumer.start()
    try:
        consumer._group._task.cancel()  # silence its heartbeats: the coordinator removes it
        async with Admin(bootstrap_servers=bootstrap) as admin:
            async def removed():
                try:
                    return not (await admin.describe_group("g6")).members
                except GroupIdNotFoundError:
                    return True  # its last member gone and nothing committed: the group is gone
            await until(removed, 10, "the silent member removed after its session timeout")
        with pytest.raises(CommitFailedError, match="is not in group 'g6'"):
            await consumer.commit({TopicPartition("kicked", 0): 1})
    finally:
        await consumer.stop()


async def _tidelog(*args: str, bootstrap: str):
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "broker.cli", *args, "--bootstrap", bootstrap],
        capture_output=True, timeout=30)


async def _poll_both(a: Consumer, b: Consumer, each: int) -> bool:
    await a.getmany(timeout_ms=10)
    await b.getmany(timeout_ms=10)
    return len(a.assignment()) == each and len(b.assignment()) == each


async def _async(value):
    return value


def test_sync_consumer_commits_only_what_iteration_handed_out(broker_process):
    from client import sync

    bootstrap = broker_process.bootstrap
    asyncio.run(setup(bootstrap, "blocking", 1, records=10))
    tp = TopicPartition("blocking", 0)
    with sync.Consumer("blocking", bootstrap_servers=bootstrap, group_id="g7", enable_auto_commit=False,
                       consumer_timeout_ms=5000, **FAST) as consumer:
        seen = [next(consumer).offset for _ in range(4)]
        consumer.commit()
        assert seen == [0, 1, 2, 3] and consumer.committed(tp) == 4  # not the 6 still buffered
    with sync.Admin(bootstrap_servers=bootstrap) as admin:
        assert admin.list_groups() == ["g7"]
        assert admin.describe_group("g7").lag == {tp: 6}


async def test_concurrent_commits_share_raft_entries(broker_process):
    """Commits arriving together are proposed in one event-loop iteration and share one entry of
    the metadata log (one append and one fsync for all of them)."""
    from client.protocol.messages import DescribeQuorumRequest

    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "busy", 4)
    conns = [await Connection.open("127.0.0.1", broker_process.port) for _ in range(32)]
    try:
        before = (await conns[0].request(DescribeQuorumRequest())).last_index
        rounds = 10
        for n in range(rounds):
            answers = await asyncio.gather(*(
                conn.request(OffsetCommitRequest(group_id=f"batch-{i}", topics=[
                    OffsetCommitTopic("busy", [OffsetCommitPartition(p, n) for p in range(4)])]))
                for i, conn in enumerate(conns)))
            assert all(a.error_code == ErrorCode.NONE for a in answers)
        entries = (await conns[0].request(DescribeQuorumRequest())).last_index - before
        print(f"{rounds * len(conns)} commit requests in {entries} Raft entries")
        assert entries <= rounds * len(conns) // 4
    finally:
        for conn in conns:
            conn.close()
    async with Admin(bootstrap_servers=bootstrap) as admin:
        assert (await admin.describe_group("batch-7")).committed == {TopicPartition("busy", p): rounds - 1 for p in range(4)}


async def test_a_member_cut_off_from_the_coordinator_stops_consuming_within_its_session(broker_process):
    """A member that hears nothing from the coordinator for session_timeout_ms (counted from the
    last answered request's send time) gives its partitions up before the coordinator can hand
    them to anyone else; it rejoins once the coordinator answers again."""
    bootstrap = broker_process.bootstrap
    await setup(bootstrap, "cutoff", 2)
    events = Recorder()
    consumer = Consumer(bootstrap_servers=bootstrap, group_id="g8", request_timeout_ms=5000, **FAST)
    consumer.subscribe(["cutoff"], listener=events)
    await consumer.start()
    try:
        assert consumer.assignment() == {TopicPartition("cutoff", 0), TopicPartition("cutoff", 1)}
        broker_process.pause()  # SIGSTOP: the coordinator neither answers nor removes anyone
        paused_at = time.monotonic()
        try:
            await until(lambda: _async(not consumer.assignment()), 10, "the cut-off member giving up its partitions")
            assert time.monotonic() - paused_at <= FAST["session_timeout_ms"] / 1000 + 0.5
            assert events.events[-1] == ("revoked", {0, 1})
        finally:
            broker_process.resume()
        await until(lambda: _poll_one(consumer, 2), 15, "the member rejoining with its partitions")
    finally:
        await consumer.stop()


async def _poll_one(consumer: Consumer, count: int) -> bool:
    await consumer.getmany(timeout_ms=20)
    return len(consumer.assignment()) == count
