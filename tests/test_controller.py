"""The controller state machine: leader election rules for partitions, fencing on a missed
session and unfencing on a heartbeat (with an injected clock), topic changes that answer only
once applied, validation against changes in flight, linearizable reads, and NOT_CONTROLLER
off the leader.

Runs the real Controller on a real RaftDriver (a quorum of one, in process), so only the
clock is fake."""

from __future__ import annotations

import asyncio
import time

import pytest

from client.protocol.errors import ErrorCode
from storage.clock import ManualClock

from broker.controller import Controller, ControllerError, ControllerSettings, elect
from broker.metadata import NO_LEADER, PartitionState
from broker.raft import RaftConfig
from broker.raft.driver import DriverSettings, RaftDriver
from broker.raft.persist import RaftStorage

pytestmark = pytest.mark.timeout(30)

SESSION_MS = 6000


def p(leader: int, epoch: int, isr: list[int], replicas: list[int] | None = None) -> PartitionState:
    return PartitionState("t", 0, replicas or sorted(set(isr) | {leader} - {NO_LEADER}), leader, epoch, isr)


def test_elect_moves_leadership_within_the_isr_and_never_outside_it():
    assert elect(p(1, 0, [1, 2, 3]), live={1, 2, 3}) is None
    assert elect(p(1, 0, [1, 2, 3]), live={1, 3}) == (1, 0, [1, 3])  # a fenced follower leaves the ISR
    assert elect(p(2, 4, [2, 3, 1], [2, 3, 1]), live={1, 3}) == (3, 5, [3, 1])  # replica order is preferred
    assert elect(p(2, 4, [2], [2, 1]), live={1}) == (NO_LEADER, 5, [2])  # 1 is not in sync: no unclean election
    assert elect(p(NO_LEADER, 5, [2], [2, 1]), live={1}) is None  # stays leaderless, no epoch churn
    assert elect(p(NO_LEADER, 5, [2], [2, 1]), live={1, 2}) == (2, 6, [2])  # back when an ISR member is


class Cluster:
    """A controller on a quorum of one, with a manual clock for sessions."""

    def __init__(self, tmp_path, voters=frozenset({1})):
        self.clock = ManualClock()
        self.controller = Controller(1, ControllerSettings(session_timeout_ms=SESSION_MS, reconcile_interval_ms=10),
                                     clock=self.clock)
        self.driver = RaftDriver(1, voters, frozenset(), RaftStorage(tmp_path, fsync=False), _NoNetwork(),
                                 self.controller, DriverSettings(tick_ms=10, raft=RaftConfig(election_ticks=4)))
        self.controller.attach(self.driver)
        self.driver.load()
        self.driver.start()

    @property
    def image(self):
        return self.controller.image

    async def stop(self):
        await self.driver.stop()
        self.controller.close()


class _NoNetwork:
    def send(self, messages):
        pass


async def until(condition, what: str, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.005)


async def test_create_answers_after_apply_and_concurrent_duplicates_are_refused(tmp_path):
    c = Cluster(tmp_path)
    try:
        await until(lambda: c.controller.active and c.image.cluster_id, "an active controller with a cluster id")
        await c.controller.register_broker(1, "h1", 1, "inc-1")
        before = c.driver.raft.log.last_index
        outcomes = await asyncio.gather(
            c.controller.create_topic("dup", 1, 1, {}), c.controller.create_topic("dup", 1, 1, {}),
            c.controller.create_topic("other", 2, 1, {}), return_exceptions=True)
        assert "dup" in c.image.topics and "other" in c.image.topics  # applied when create returned
        errors = [o.code for o in outcomes if isinstance(o, ControllerError)]
        assert errors == [ErrorCode.TOPIC_ALREADY_EXISTS]
        assert c.driver.raft.log.last_index - before <= 2  # creates made together share entries
        with pytest.raises(ControllerError) as refused:
            await c.controller.create_topic("big", 1, 3, {})
        assert refused.value.code == ErrorCode.INVALID_REPLICATION_FACTOR
        await c.controller.delete_topic("dup")
        assert "dup" not in c.image.topics
    finally:
        await c.stop()


async def test_a_silent_broker_is_fenced_its_partitions_move_and_it_comes_back(tmp_path):
    c = Cluster(tmp_path)
    ctl = c.controller
    try:
        await until(lambda: ctl.active, "an active controller")
        for node_id in (1, 2, 3):
            await until(lambda: ctl.active, "the controller back after learning a new broker")
            await ctl.register_broker(node_id, f"h{node_id}", node_id, f"inc-{node_id}")
        await until(lambda: ctl.active and {1, 2, 3} <= set(c.image.brokers), "three registered brokers")
        await ctl.create_topic("wide", 3, 3, {})
        await ctl.create_topic("narrow", 3, 1, {})  # one replica each, on 1, 2, 3
        led_by_2 = next(s for s in c.image.topics["wide"].partitions if s.leader == 2)
        alone_on_2 = next(s for s in c.image.topics["narrow"].partitions if s.replicas == [2])

        c.clock.advance(SESSION_MS // 2)
        ctl.heartbeat(3, "inc-3")  # 3 keeps heartbeating, 2 goes silent
        c.clock.advance(SESSION_MS // 2 + 1)
        await until(lambda: c.image.brokers[2].fenced, "broker 2 fenced")
        wide = c.image.partition("wide", led_by_2.partition)
        await until(lambda: wide.leader != 2, "leadership moved off broker 2")
        assert wide.leader_epoch == 1 and 2 not in wide.isr and wide.leader in wide.isr
        assert all(2 not in s.isr for s in c.image.topics["wide"].partitions)
        narrow = c.image.partition("narrow", alone_on_2.partition)
        await until(lambda: narrow.leader == NO_LEADER, "the partition only 2 held has no leader")
        assert narrow.isr == [2] and narrow.leader_epoch == 1
        assert not c.image.brokers[3].fenced and not c.image.brokers[1].fenced  # the controller's own: never

        assert ctl.heartbeat(2, "inc-2") is True  # it is back: fenced until the controller writes otherwise
        await until(lambda: not c.image.brokers[2].fenced, "broker 2 unfenced")
        await until(lambda: narrow.leader == 2, "broker 2 leads its partition again")
        assert narrow.leader_epoch == 2
        with pytest.raises(ControllerError) as stale:
            ctl.heartbeat(2, "an-older-process")
        assert stale.value.code == ErrorCode.STALE_BROKER_EPOCH
    finally:
        await c.stop()


async def test_off_the_leader_every_change_is_refused_with_not_controller(tmp_path):
    c = Cluster(tmp_path, voters=frozenset({1, 2, 3}))  # the other voters never answer
    try:
        with pytest.raises(ControllerError) as refused:
            await c.controller.create_topic("t", 1, 1, {})
        assert refused.value.code == ErrorCode.NOT_CONTROLLER and refused.value.code.retriable
        assert "no controller" in refused.value.message and "1,2,3" in refused.value.message
        with pytest.raises(ControllerError):
            c.controller.heartbeat(1, "x")
        with pytest.raises(ControllerError) as refused:
            await c.controller.linearizable_read()
        assert refused.value.code == ErrorCode.NOT_CONTROLLER
    finally:
        await c.stop()


async def test_a_linearizable_read_on_the_controller_sees_every_applied_change(tmp_path):
    c = Cluster(tmp_path)
    try:
        await until(lambda: c.controller.active and c.image.cluster_id, "an active controller with a cluster id")
        await c.controller.register_broker(1, "h1", 1, "inc-1")
        await c.controller.create_topic("seen", 1, 1, {})
        await c.controller.linearizable_read()  # a quorum of one: at once, applied == committed
        assert "seen" in c.image.topics and c.driver.applied_index == c.driver.raft.log.commit
    finally:
        await c.stop()


async def test_the_image_survives_a_restart_from_snapshot_and_log(tmp_path):
    c = Cluster(tmp_path)
    await until(lambda: c.controller.active, "an active controller")
    await c.controller.register_broker(1, "h1", 1, "inc-1")
    for i in range(5):
        await c.controller.create_topic(f"t{i}", 1, 1, {})
    snapshot = c.image.to_snapshot()
    await c.stop()
    c.driver._storage.close()

    again = Cluster(tmp_path)
    try:
        assert again.image.to_snapshot() == snapshot  # loaded before start: what handlers see at once
    finally:
        await again.stop()
