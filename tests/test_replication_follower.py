"""A follower's fetcher against a leader's replica manager, in process, over a fake connection
that calls the leader's handlers' replica-manager methods directly: KIP-101 truncation (and
KIP-279's walk back through epochs the leader never had), fetching at the leader's offsets, the
high watermark following the ISR, and stale answers being dropped.

Real storage logs on tmp_path, a manual clock; no sockets."""

from __future__ import annotations

import asyncio

import pytest

from client.protocol import records
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    ACKS_ALL,
    EpochEndOffset,
    FetchPartitionResult,
    FetchRequest,
    FetchResponse,
    FetchTopicResult,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)
from storage.clock import ManualClock
from storage.manager import LogManager

from broker.config import BrokerConfig
from broker.metadata import MetadataImage
from broker.partitions import ReplicaManager, broker_log_config
from broker.replication.fetcher import LeaderFetcher, ReplicaFetchers, _Followed

pytestmark = pytest.mark.timeout(30)

KEY = ("t", 0)


def batch(*values: bytes) -> bytes:
    return records.build_batch([(None, v, 1_000, None) for v in values])


class Node:
    """One broker's replica manager on its own data dir (no network, no fetcher tasks)."""

    def __init__(self, root, node_id: int, clock: ManualClock):
        config = BrokerConfig(node_id=node_id, data_dir=str(root / f"node-{node_id}"), replica_lag_time_max_ms=1000)
        self.logs = LogManager(root / f"node-{node_id}", broker_log_config(config), clock)
        self.replicas = ReplicaManager(config, self.logs, clock)

    def log(self):
        return self.logs.get(*KEY) or self.logs.create(*KEY)

    def values(self) -> list[tuple[int, int, bytes]]:
        """(offset, leader epoch, value) of every record in the log."""
        log = self.log()
        data = log.read(log.log_start_offset, 1 << 30).read_bytes() if log.log_end_offset > log.log_start_offset else b""
        out = []
        for b in records.iter_batches(data):
            for i, record in enumerate(b):
                out.append((b.header.base_offset + i, b.header.leader_epoch, record.value))
        return out

    def close(self):
        self.logs.close()


def image(leader: int, leader_epoch: int, isr: list[int], partition_epoch: int = 1) -> MetadataImage:
    img = MetadataImage()
    img.apply(["topic", "t", "id", 1, 3, {}, [[1, 2, 3]]])
    img.apply(["partition", "t", 0, leader, leader_epoch, isr])
    img.partition("t", 0).partition_epoch = partition_epoch  # as if that many changes were applied
    return img


class LoopbackConnection:
    """Answers the follower's requests from the leader's replica manager."""

    def __init__(self, leader: ReplicaManager):
        self.leader = leader
        self.requests: list = []

    async def request(self, request):
        self.requests.append(request)
        if isinstance(request, OffsetsForLeaderEpochRequest):
            topics = []
            for topic, queries in request.topics:
                rows = []
                for q in queries:
                    code, epoch, end = self.leader.end_offset_for_epoch(topic, q.partition, q.current_leader_epoch,
                                                                        q.leader_epoch)
                    rows.append(EpochEndOffset(q.partition, code, epoch, end))
                topics.append((topic, rows))
            return OffsetsForLeaderEpochResponse(topics=topics)
        assert isinstance(request, FetchRequest)
        topics = []
        for topic in request.topics:
            rows = []
            for part in topic.partitions:
                read = self.leader.read_for_fetch(topic.topic, part.partition, part.fetch_offset, part.partition_max_bytes,
                                                  True, request.replica_id, part.current_leader_epoch)
                rows.append(FetchPartitionResult(part.partition, read.error, read.high_watermark, read.high_watermark,
                                                 read.log_start_offset, memoryview(bytes(read.records))))
            topics.append(FetchTopicResult(topic.topic, rows))
        return FetchResponse(topics=topics)


def fetcher_for(follower: Node, leader_id: int, leader_epoch: int) -> LeaderFetcher:
    owner = ReplicaFetchers(follower.replicas.node_id, follower.replicas, lambda node: None)
    fetcher = LeaderFetcher(owner, leader_id)
    fetcher.partitions[KEY] = _Followed(leader_epoch)
    return fetcher


async def fetch_once(fetcher: LeaderFetcher, conn: LoopbackConnection) -> None:
    await fetcher._truncate(conn)
    request, asked = fetcher._fetch_request(0.0)
    if request is not None:
        fetcher._take(await conn.request(request), asked, 0.0)


@pytest.fixture
def nodes(tmp_path):
    clock = ManualClock()
    made = {n: Node(tmp_path, n, clock) for n in (1, 2, 3)}
    yield made, clock
    for node in made.values():
        node.close()


async def test_a_returning_follower_cuts_its_divergent_suffix_at_the_leaders_epoch_end(nodes):
    """KIP-101's double failover: node 1 led epoch 0 and wrote b, c that node 2 never got; node 2
    then led epoch 1 and wrote x at the same offset. Truncating to a high watermark could keep
    c and lose x's place; the epoch answer cuts node 1 exactly where epoch 0 ended on node 2."""
    (n, clock) = nodes
    n[1].log().append(batch(b"a"), 0)
    n[1].log().append(batch(b"b", b"c"), 0)
    n[2].log().append(batch(b"a"), 0)
    n[2].log().append(batch(b"x"), 1)
    n[2].replicas.apply_image(image(2, 1, [2]))  # node 2 leads epoch 1 alone
    n[1].replicas.apply_image(image(2, 1, [2]))
    fetcher = fetcher_for(n[1], 2, 1)
    conn = LoopbackConnection(n[2].replicas)

    await fetch_once(fetcher, conn)
    assert n[1].values() == n[2].values() == [(0, 0, b"a"), (1, 1, b"x")]
    asked = [r for r in conn.requests if isinstance(r, OffsetsForLeaderEpochRequest)]
    assert [q.leader_epoch for _, qs in asked[0].topics for q in qs] == [0]


async def test_truncation_walks_back_through_epochs_the_leader_never_had(nodes):
    """KIP-279: the leader answers an older epoch than asked; the follower bounds the cut by its
    own end of that epoch and asks again until both logs agree on an epoch."""
    (n, clock) = nodes
    follower, leader = n[1].log(), n[2].log()
    follower.append(batch(b"0", b"1", b"2", b"3", b"4"), 0)  # offsets 0-4, epoch 0
    follower.append(batch(b"f5", b"f6", b"f7"), 2)  # offsets 5-7, epoch 2 (only the follower had it)
    leader.append(batch(b"0", b"1", b"2", b"3"), 0)  # offsets 0-3, epoch 0
    leader.append(batch(b"l4", b"l5"), 1)  # offsets 4-5, epoch 1 (only the leader had it)
    leader.append(batch(b"l6"), 3)  # offset 6, epoch 3
    n[2].replicas.apply_image(image(2, 3, [2]))
    n[1].replicas.apply_image(image(2, 3, [2]))
    fetcher = fetcher_for(n[1], 2, 3)
    conn = LoopbackConnection(n[2].replicas)

    await fetch_once(fetcher, conn)
    asked = [q.leader_epoch for r in conn.requests if isinstance(r, OffsetsForLeaderEpochRequest)
             for _, qs in r.topics for q in qs]
    assert asked == [2, 0]  # epoch 2 is unknown to the leader (answer: epoch 1), then epoch 0 agrees
    for _ in range(3):
        await fetch_once(fetcher, conn)
    assert n[1].values() == n[2].values()
    assert [v for _, _, v in n[1].values()] == [b"0", b"1", b"2", b"3", b"l4", b"l5", b"l6"]


async def test_the_high_watermark_waits_for_the_isr_and_acks_all_for_it(nodes):
    (n, clock) = nodes
    for node in (1, 2, 3):
        n[node].replicas.apply_image(image(1, 0, [1, 2, 3]))
    leader = n[1].replicas
    conns = {f: LoopbackConnection(leader) for f in (2, 3)}
    fetchers = {f: fetcher_for(n[f], 1, 0) for f in (2, 3)}
    outcome = leader.append_as_leader("t", 0, memoryview(batch(b"a", b"b")), ACKS_ALL)
    assert outcome.error == ErrorCode.NONE and outcome.next_offset == 2
    waiter = asyncio.ensure_future(leader.wait_for_high_watermark(KEY, 2, 5.0))
    await fetch_once(fetchers[2], conns[2])  # 2 gets the batch (its fetch at 0 reports nothing new)
    await fetch_once(fetchers[2], conns[2])  # its next fetch at 2 reports it holds the batch
    assert leader.partitions[KEY].high_watermark == 0 and not waiter.done()  # 3 has not fetched
    await fetch_once(fetchers[3], conns[3])
    await fetch_once(fetchers[3], conns[3])
    assert leader.partitions[KEY].high_watermark == 2
    assert await waiter == ErrorCode.NONE
    # Consumers read only below the high watermark; followers read up to the log end.
    leader.append_as_leader("t", 0, memoryview(batch(b"c")), ACKS_ALL)
    assert leader.read_for_fetch("t", 0, 2, 1 << 20, True).records == b""
    assert len(leader.read_for_fetch("t", 0, 2, 1 << 20, True, replica_id=2, current_leader_epoch=0).records) > 0
    assert n[2].values() == n[3].values() == [(0, 0, b"a"), (1, 0, b"b")]


async def test_a_lagging_follower_leaves_the_isr_through_the_controller_only(nodes):
    (n, clock) = nodes
    n[1].replicas.apply_image(image(1, 0, [1, 2, 3]))
    leader = n[1].replicas
    proposals = []

    class Sender:
        def submit(self, key, proposal):
            proposals.append((key, proposal))

    leader.isr_changes = Sender()
    fetcher = fetcher_for(n[2], 1, 0)
    n[2].replicas.apply_image(image(1, 0, [1, 2, 3]))
    leader.append_as_leader("t", 0, memoryview(batch(b"a")), ACKS_ALL)
    await fetch_once(fetcher, LoopbackConnection(leader))
    await fetch_once(fetcher, LoopbackConnection(leader))  # 2 is caught up; 3 never fetches
    clock.advance(1001)  # past replica_lag_time_max_ms
    leader._expire_isr()
    [(key, proposal)] = proposals
    assert key == KEY and proposal.isr == (1, 2) and proposal.removed == (3,)
    assert leader.partitions[KEY].leader_state.isr == [1, 2, 3]  # nothing changes before the commit
    leader.apply_image(image(1, 0, [1, 2], partition_epoch=2))  # the controller committed it
    assert leader.partitions[KEY].leader_state.isr == [1, 2]
    assert leader.partitions[KEY].high_watermark == 1  # 2 holds everything: the HW moves at once
    assert leader.isr_shrinks == 1


async def test_answers_for_a_past_epoch_are_dropped_and_stale_epochs_are_fenced(nodes):
    (n, clock) = nodes
    n[1].replicas.apply_image(image(1, 0, [1, 2]))
    n[2].replicas.apply_image(image(1, 0, [1, 2]))
    leader = n[1].replicas
    leader.append_as_leader("t", 0, memoryview(batch(b"a")), 1)
    fetcher = fetcher_for(n[2], 1, 0)
    conn = LoopbackConnection(leader)
    await fetcher._truncate(conn)  # an empty log: nothing to ask
    request, asked = fetcher._fetch_request(0.0)
    response = await conn.request(request)
    n[2].replicas.apply_image(image(3, 1, [3, 2]))  # the leader changed while the fetch was out
    fetcher._take(response, asked, 0.0)
    assert n[2].log().log_end_offset == 0  # the old epoch's answer was not appended
    read = leader.read_for_fetch("t", 0, 0, 1 << 20, True, replica_id=2, current_leader_epoch=1)
    assert read.error == ErrorCode.UNKNOWN_LEADER_EPOCH  # node 1 has not heard of epoch 1 yet
    leader.apply_image(image(3, 1, [3, 2]))
    assert leader.append_as_leader("t", 0, memoryview(batch(b"b")), 1).error == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert leader.read_for_fetch("t", 0, 0, 1 << 20, True).error == ErrorCode.NOT_LEADER_OR_FOLLOWER


async def test_a_leader_without_its_lease_takes_no_write(nodes):
    """Past most of a session without the controller hearing it (paused, cut off), a leader
    must assume it was replaced: it refuses writes rather than take ones it could not keep."""
    (n, clock) = nodes
    leader = n[1].replicas
    leader.apply_image(image(1, 0, [1, 2]))
    lease = {"held": True}
    leader.holds_lease = lambda: lease["held"]
    assert leader.append_as_leader("t", 0, memoryview(batch(b"a")), 1).error == ErrorCode.NONE
    lease["held"] = False
    refused = leader.append_as_leader("t", 0, memoryview(batch(b"b")), 1)
    assert refused.error == ErrorCode.NOT_LEADER_OR_FOLLOWER and "may have been replaced" in refused.message
    assert n[1].log().log_end_offset == 1


async def test_a_follower_behind_the_leaders_log_start_starts_over_there(nodes):
    """Retention on the leader deleted what the follower still needs: the fetch answers
    OFFSET_OUT_OF_RANGE with the leader's log start, and the follower restarts its log there."""
    (n, clock) = nodes
    n[1].log().truncate_fully_and_start_at(10)  # as if retention had removed offsets 0-9
    for node in (1, 2):
        n[node].replicas.apply_image(image(1, 0, [1, 2]))
    leader = n[1].replicas
    leader.append_as_leader("t", 0, memoryview(batch(b"k", b"l")), 1)
    fetcher = fetcher_for(n[2], 1, 0)
    conn = LoopbackConnection(leader)
    for _ in range(3):
        await fetch_once(fetcher, conn)
    assert n[2].log().log_start_offset == 10
    assert n[2].values() == n[1].values() == [(10, 0, b"k"), (11, 0, b"l")]
