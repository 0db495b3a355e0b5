"""Metadata records, the image they build, and the single-node metadata log's torn-tail handling."""

import pytest

from broker.metadata import LocalController, MetadataImage, assign_replicas

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


def test_local_controller_survives_restart_and_cuts_a_torn_tail(tmp_path):
    controller = LocalController(tmp_path, node_id=1)
    controller.register_broker("127.0.0.1", 9292)
    controller.commit([["topic", "t", "id", 1, 1, {}, [[1]]]])
    cluster_id = controller.image.cluster_id
    controller.close()
    with open(tmp_path / "metadata.log", "ab") as handle:
        handle.write(b"\x00\x00\x00\x40garbage")  # a crash mid-append
    again = LocalController(tmp_path, node_id=1)
    assert set(again.image.topics) == {"t"} and again.image.cluster_id == cluster_id
    again.commit([["delete_topic", "t"]])  # appends after the cut tail, not after garbage
    again.close()
    assert LocalController(tmp_path, node_id=1).image.topics == {}
