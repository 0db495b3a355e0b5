"""The controller's side of replication: AlterPartition (ISR changes from partition leaders),
compare-and-set partition records, unclean election only when a topic allows it, preferred-leader
rebalancing, and a restarted broker treated as fenced at re-registration.

Pure rules are checked directly; the rest on the real Controller over a real RaftDriver (a
quorum of one in process, manual clock), as in test_controller.py."""

from __future__ import annotations

import pytest

from client.protocol.errors import ErrorCode

from broker.controller import ControllerError, check_isr_change, elect, partition_record
from broker.metadata import NO_LEADER, MetadataImage, PartitionState
from tests.test_controller import Cluster, until

pytestmark = pytest.mark.timeout(30)


def state(leader: int, epoch: int, isr: list[int], replicas: list[int], partition_epoch: int = 0) -> PartitionState:
    return PartitionState("t", 0, replicas, leader, epoch, isr, partition_epoch)


def test_unclean_election_happens_only_when_allowed_and_keeps_one_replica():
    lost = state(2, 4, [2], [2, 1, 3])
    assert elect(lost, live={1, 3}) == (NO_LEADER, 5, [2])  # clean: wait for 2
    assert elect(lost, live={1, 3}, unclean=True) == (1, 5, [1])  # first live replica, ISR of one
    assert elect(state(NO_LEADER, 5, [2], [2, 1]), live=set(), unclean=True) is None  # nobody to elect


def test_rebalance_moves_leadership_home_only_to_an_in_sync_preferred_replica():
    away = state(2, 3, [2, 3], [1, 2, 3])
    assert elect(away, live={1, 2, 3}, rebalance=True) is None  # 1 is live but not in sync yet
    back = state(2, 3, [2, 3, 1], [1, 2, 3])
    assert elect(back, live={1, 2, 3}, rebalance=True) == (1, 4, [2, 3, 1])
    assert elect(back, live={1, 2, 3}) is None  # rebalancing off


def test_isr_change_checks_leader_epochs_version_and_eligibility():
    s = state(1, 5, [1, 2], [1, 2, 3], partition_epoch=7)
    assert check_isr_change(s, 1, 5, 7, [1, 2, 3], live={1, 2, 3}) is None
    assert check_isr_change(s, 1, 5, 7, [1], live={1, 2, 3}) is None  # shrinking needs no liveness
    assert check_isr_change(s, 2, 5, 7, [1, 2], live={1, 2, 3})[0] == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert check_isr_change(s, 1, 4, 7, [1], live={1, 2, 3})[0] == ErrorCode.FENCED_LEADER_EPOCH
    assert check_isr_change(s, 1, 6, 7, [1], live={1, 2, 3})[0] == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert check_isr_change(s, 1, 5, 6, [1], live={1, 2, 3})[0] == ErrorCode.INVALID_UPDATE_VERSION
    assert check_isr_change(s, 1, 5, 7, [1, 2, 3], live={1, 2})[0] == ErrorCode.INELIGIBLE_REPLICA  # 3 fenced
    assert check_isr_change(s, 1, 5, 7, [2, 3], live={1, 2, 3})[0] == ErrorCode.INVALID_REQUEST  # no leader
    assert check_isr_change(s, 1, 5, 7, [1, 4], live={1, 2, 3, 4})[0] == ErrorCode.INVALID_REQUEST  # not a replica
    assert check_isr_change(None, 1, 5, 7, [1], live={1})[0] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_partition_records_are_compare_and_set_on_the_partition_epoch():
    image = MetadataImage()
    image.apply(["topic", "t", "id", 1, 3, {}, [[1, 2, 3]]])
    s = image.partition("t", 0)
    election = partition_record("t", s, 2, 1, [2, 3])  # decided at partition epoch 0
    shrink = partition_record("t", s, 1, 0, [1, 2])  # also decided at 0, by the old leader
    image.apply(election)
    image.apply(shrink)  # must not undo the election committed just before it
    assert (s.leader, s.leader_epoch, s.isr, s.partition_epoch) == (2, 1, [2, 3], 1)
    image.apply(["partition", "t", 0, 2, 1, [2]])  # an unconditional record (older logs) still applies
    assert s.isr == [2] and s.partition_epoch == 2
    restored = MetadataImage.from_snapshot(image.to_snapshot())
    assert restored.partition("t", 0).partition_epoch == 2


async def _three_brokers(c: Cluster) -> None:
    ctl = c.controller
    await until(lambda: ctl.active, "an active controller")
    for node_id in (1, 2, 3):
        await until(lambda: ctl.active, "the controller back after learning a new broker")
        await ctl.register_broker(node_id, f"h{node_id}", node_id, f"inc-{node_id}")
    await until(lambda: ctl.active and {1, 2, 3} <= set(c.image.brokers), "three registered brokers")


async def test_alter_partition_commits_a_valid_change_and_refuses_a_stale_one(tmp_path):
    c = Cluster(tmp_path)
    ctl = c.controller
    try:
        await _three_brokers(c)
        await ctl.create_topic("t", 1, 3, {})
        s = c.image.partition("t", 0)
        leader, epoch, version = s.leader, s.leader_epoch, s.partition_epoch
        follower = next(r for r in s.replicas if r != leader)
        smaller = [r for r in s.isr if r != follower]
        [(code, _, after)] = await ctl.alter_partition(leader, f"inc-{leader}", [("t", 0, epoch, version, smaller)])
        assert code == ErrorCode.NONE and after.isr == smaller and after.partition_epoch == version + 1
        assert c.image.partition("t", 0).isr == smaller  # applied when the call returned

        # The same request again, from the version it was made from: already so, answered NONE.
        [(code, _, _)] = await ctl.alter_partition(leader, f"inc-{leader}", [("t", 0, epoch, version, smaller)])
        assert code == ErrorCode.NONE
        # Re-adding from the old version is refused: it was decided before the shrink.
        [(code, message, _)] = await ctl.alter_partition(leader, f"inc-{leader}", [("t", 0, epoch, version, s.replicas)])
        assert code == ErrorCode.INVALID_UPDATE_VERSION and "partition epoch" in message
        # From the current version it is granted.
        [(code, _, after)] = await ctl.alter_partition(
            leader, f"inc-{leader}", [("t", 0, epoch, version + 1, smaller + [follower])])
        assert code == ErrorCode.NONE and set(after.isr) == set(s.replicas)

        with pytest.raises(ControllerError) as stale:
            await ctl.alter_partition(leader, "an-older-process", [("t", 0, epoch, version + 2, smaller)])
        assert stale.value.code == ErrorCode.STALE_BROKER_EPOCH
    finally:
        await c.stop()


async def test_a_restarted_broker_leaves_every_isr_and_its_leaderships_move(tmp_path):
    c = Cluster(tmp_path)
    ctl = c.controller
    try:
        await _three_brokers(c)
        await ctl.create_topic("t", 3, 3, {})
        led_by_2 = next(s for s in c.image.topics["t"].partitions if s.leader == 2)
        epoch = led_by_2.leader_epoch
        await ctl.register_broker(2, "h2", 2, "inc-2-restarted")  # a new process, never fenced
        s = c.image.partition("t", led_by_2.partition)
        assert s.leader != 2 and s.leader_epoch == epoch + 1
        assert all(2 not in p.isr for p in c.image.topics["t"].partitions)
        assert not c.image.brokers[2].fenced
    finally:
        await c.stop()
