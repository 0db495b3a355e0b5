"""Metadata records, the image they build, and the image's snapshot form (what a Raft snapshot
of the metadata log holds). The log itself is the controller quorum's: tests/test_raft_driver.py."""

import pytest

from broker.metadata import MetadataImage, assign_replicas

pytestmark = pytest.mark.timeout(30)


def test_image_applies_records_in_order():
    image = MetadataImage()
    image.apply(["broker", 1, "h", 1, "x"])
    image.apply(["topic", "t", "id", 2, 1, {"retention.ms": "5"}, [[1], [1]]])
    image.apply(["partition", "t", 1, 1, 4, [1]])
    assert image.partition("t", 1).leader_epoch == 4
    assert image.partition("t", 2) is None and image.partition("u", 0) is None
    image.apply(["fence", 1, True])
    assert image.live_brokers() == []
    image.apply(["delete_topic", "t"])
    assert "t" not in image.topics and image.applied_records == 5
    with pytest.raises(ValueError, match="unknown metadata record"):
        image.apply(["bogus"])


def test_assignment_spreads_leaders_and_refuses_too_many_replicas():
    assignment = assign_replicas([3, 1, 2], partitions=6, replication_factor=3)
    assert [replicas[0] for replicas in assignment] == [1, 2, 3, 1, 2, 3]
    assert all(len(set(replicas)) == 3 for replicas in assignment)
    with pytest.raises(ValueError, match="exceeds the 2 live brokers"):
        assign_replicas([1, 2], 1, 3)


def test_image_snapshot_round_trips_every_kind_of_state():
    image = MetadataImage()
    image.apply(["cluster", "c-1"])
    image.apply(["broker", 1, "h1", 9292, "a"])
    image.apply(["broker", 2, "h2", 9392, "b"])
    image.apply(["fence", 2, True])
    image.apply(["topic", "t", "id-t", 2, 2, {"retention.ms": "5"}, [[1, 2], [2, 1]]])
    image.apply(["partition", "t", 1, 1, 3, [1], [1, 2]])  # with the optional replicas field
    image.apply(["offset_commit", "billing", "t", 0, 42, "meta"])
    again = MetadataImage.from_snapshot(image.to_snapshot())
    assert again.to_snapshot() == image.to_snapshot()
    assert again.cluster_id == "c-1" and again.brokers[2].fenced and again.partition("t", 1).leader_epoch == 3
    assert again.offsets["billing"][("t", 0)].offset == 42 and again.applied_records == 7
    again.apply(["partition", "t", 0, 1, 1, [1]])  # records after a snapshot apply as usual
    assert again.partition("t", 0).isr == [1] and again.partition("t", 0).replicas == [1, 2]
