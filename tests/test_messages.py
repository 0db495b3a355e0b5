"""Typed messages: every request and response round-trips through frames decoded three ways,
record bytes stay zero-copy, malformed controls raise only ProtocolError subclasses with clear
messages, the API registry and its version checks, and the topic-name rules in limits."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol import limits
from client.protocol import messages as m
from client.protocol.errors import (
    ErrorCode,
    InvalidRequestError,
    InvalidResponseError,
    InvalidTopicNameError,
    ProtocolError,
    RequestRejectedError,
    UnsupportedApiError,
    UnsupportedVersionError,
)
from client.protocol.frames import FrameDecoder, RequestFrame, encode_request, encode_response
from tests.test_frames import decode_three_ways, wire

pytestmark = pytest.mark.timeout(60)

_PARTITION = m.PartitionMetadata(ErrorCode.NONE, 0, 1, 5, [1, 2, 3], [1, 2])
_LEADERLESS = m.PartitionMetadata(ErrorCode.LEADER_NOT_AVAILABLE, 1, m.NO_NODE_ID, 4, [2], [])

REQUESTS = [
    m.ApiVersionsRequest(client_software_name="tidelog-python", client_software_version="0.1.0"),
    m.MetadataRequest(topics=None, allow_auto_topic_creation=False),
    m.MetadataRequest(topics=["orders", "payments"], allow_auto_topic_creation=True),
    m.CreateTopicsRequest(
        topics=[m.NewTopic("orders", 6, 3, {"min.insync.replicas": "2"}), m.NewTopic("x", 1, 1)],
        timeout_ms=5000,
        validate_only=True,
    ),
    m.DeleteTopicsRequest(names=["orders"], timeout_ms=1000),
    m.AlterTopicConfigsRequest(
        topics=[
            m.TopicConfigAlteration("orders", {"retention.ms": "3600000", "segment.bytes": "1048576"}, ["flush.ms"]),
            m.TopicConfigAlteration("x"),
        ],
        timeout_ms=5000,
        validate_only=True,
    ),
    m.ProduceRequest(
        acks=m.ACKS_ALL,
        timeout_ms=1500,
        topics=[
            m.ProduceTopic("orders", [m.ProducePartition(0, b"batch-0" * 3), m.ProducePartition(3, b"b3")]),
            m.ProduceTopic("empty", []),
            m.ProduceTopic("payments", [m.ProducePartition(1, b"")]),
        ],
    ),
    m.FetchRequest(
        replica_id=m.CONSUMER_REPLICA_ID,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=8 << 20,
        isolation_level=m.READ_COMMITTED,
        topics=[m.FetchTopic("orders", [m.FetchPartition(0, 2**40, 1 << 20, 7), m.FetchPartition(1, 0)])],
    ),
    m.ListOffsetsRequest(
        replica_id=2,
        isolation_level=m.READ_UNCOMMITTED,
        topics=[
            m.ListOffsetsTopic(
                "orders", [m.ListOffsetsPartition(0, m.EARLIEST_TIMESTAMP), m.ListOffsetsPartition(1, 1_700_000_000_000)]
            )
        ],
    ),
    m.DescribeTopicRequest(names=["orders"]),
    m.DescribeClusterRequest(),
    # Broker to broker (the embedded Raft controller): the Raft message is opaque to the codec.
    m.RaftVoteRequest(message=[3, 1, 2, 7, 10, 6]),
    m.RaftAppendEntriesRequest(message=[5, 1, 2, 7, 10, 6, [[7, 11, 0, b"records"]], 9]),
    m.RaftInstallSnapshotRequest(message=[9, 1, 2, 7, 100, 6, b"image"]),
    m.BrokerRegistrationRequest(node_id=2, host="127.0.0.1", port=9392, incarnation="4f2a"),
    m.BrokerHeartbeatRequest(node_id=2, incarnation="4f2a"),
    m.DescribeQuorumRequest(),
    m.OffsetsForLeaderEpochRequest(replica_id=2, topics=[("t", [m.EpochQuery(0, 5, 3), m.EpochQuery(1, 5, 4)])]),
    m.AlterPartitionRequest(broker_id=1, incarnation="abc", topics=[("t", [m.IsrChange(0, 5, 9, [1, 2])])]),
    m.ControlledShutdownRequest(broker_id=2, incarnation="abc"),
    m.InitProducerIdRequest(),
    m.InitProducerIdRequest(transactional_id="tx-1", transaction_timeout_ms=30_000, producer_id=7, producer_epoch=2),
    # consumer groups
    m.FindCoordinatorRequest(key="billing"),
    m.JoinGroupRequest(group_id="billing", member_id="", group_instance_id="host-1", client_id="c",
                       session_timeout_ms=10_000, rebalance_timeout_ms=60_000, topics=["orders"], assignor="sticky",
                       owned=[m.TopicPartitions("orders", [0, 2])]),
    m.SyncGroupRequest(group_id="billing", member_id="m-1", generation=3, owned=[m.TopicPartitions("orders", [1])]),
    m.HeartbeatRequest(group_id="billing", member_id="m-1", generation=3),
    m.LeaveGroupRequest(group_id="billing", member_id="m-1", group_instance_id=None, reason="stopping"),
    m.OffsetCommitRequest(group_id="billing", member_id="m-1", generation=3,
                          topics=[m.OffsetCommitTopic("orders", [m.OffsetCommitPartition(0, 42, "meta")])]),
    m.OffsetFetchRequest(group_id="billing", topics=[m.TopicPartitions("orders", [0, 1])]),
    m.ListGroupsRequest(),
    m.DescribeGroupsRequest(group_ids=["billing", "audit"]),
    # Security (broker/security/).
    m.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"),
    m.SaslAuthenticateRequest(auth_bytes=b"n,,n=alice,r=abc"),
    m.DescribeUserScramCredentialsRequest(users=["alice"]),
    m.AlterUserScramCredentialsRequest(upsertions=[m.ScramUpsertion("alice", "SCRAM-SHA-256", 8192, b"s" * 16,
                                                                    b"k" * 32, b"v" * 32)],
                                       deletions=[m.ScramDeletion("bob", "SCRAM-SHA-256")]),
    m.DescribeAclsRequest(filter=m.AclFilter(principal="User:alice")),
    m.CreateAclsRequest(acls=[m.AclBinding("User:alice", "topic", "orders", "literal", "write", "allow")]),
    m.DeleteAclsRequest(filters=[m.AclFilter(resource_type="group", operation="read")]),
    # Transactions (broker/txn_coordinator.py).
    m.AddPartitionsToTxnRequest(transactional_id="tx-1", producer_id=7, producer_epoch=2,
                                topics=[m.TopicPartitions("orders", [0, 3])]),
    m.AddOffsetsToTxnRequest(transactional_id="tx-1", producer_id=7, producer_epoch=2, group_id="billing"),
    m.EndTxnRequest(transactional_id="tx-1", producer_id=7, producer_epoch=2, committed=False),
    m.WriteTxnMarkersRequest(coordinator_epoch=4, markers=[
        m.TxnMarker(7, 2, True, [m.TopicPartitions("orders", [0, 3]), m.TopicPartitions("audit", [1])])]),
    m.TxnOffsetCommitRequest(transactional_id="tx-1", producer_id=7, producer_epoch=2, group_id="billing",
                             member_id="m-1", generation=3,
                             topics=[m.OffsetCommitTopic("orders", [m.OffsetCommitPartition(0, 42, "")])]),
]

RESPONSES = [
    m.ApiVersionsResponse(
        error_code=ErrorCode.NONE,
        api_versions=[m.ApiVersionRange(key, low, high) for key, (low, high) in m.API_VERSIONS.items()],
    ),
    m.MetadataResponse(
        brokers=[m.BrokerMetadata(1, "127.0.0.1", 9292), m.BrokerMetadata(2, "h2", 65535)],
        controller_id=1,
        cluster_id="c-1",
        topics=[
            m.TopicMetadata(ErrorCode.NONE, "orders", [_PARTITION, _LEADERLESS]),
            m.TopicMetadata(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "missing", []),
        ],
    ),
    m.MetadataResponse(brokers=[], controller_id=m.NO_NODE_ID, cluster_id=None, topics=[]),
    m.CreateTopicsResponse(
        topics=[m.TopicResult("orders", ErrorCode.NONE), m.TopicResult("x", ErrorCode.TOPIC_ALREADY_EXISTS, "exists")]
    ),
    m.DeleteTopicsResponse(topics=[m.TopicResult("orders", ErrorCode.TOPIC_DELETION_DISABLED, "disabled")]),
    m.AlterTopicConfigsResponse(
        topics=[m.TopicResult("orders", ErrorCode.NONE), m.TopicResult("x", ErrorCode.INVALID_CONFIG, "unknown config 'x.y'")]
    ),
    m.ProduceResponse(
        topics=[
            m.ProduceTopicResult(
                "orders",
                [
                    m.ProducePartitionResult(0, ErrorCode.NONE, None, 42, m.NO_TIMESTAMP, 0),
                    m.ProducePartitionResult(3, ErrorCode.NOT_LEADER_OR_FOLLOWER, "leader is 2"),
                ],
            )
        ],
        throttle_time_ms=10,
    ),
    m.FetchResponse(
        throttle_time_ms=0,
        error_code=ErrorCode.NONE,
        topics=[
            m.FetchTopicResult(
                "orders",
                [
                    m.FetchPartitionResult(0, ErrorCode.NONE, 100, 100, 0, b"batches-of-0" * 4),
                    m.FetchPartitionResult(1, ErrorCode.OFFSET_OUT_OF_RANGE, 5, 5, 2, b""),
                    m.FetchPartitionResult(2, ErrorCode.NONE, 2**62, 2**62, 0, b"z"),
                ],
            )
        ],
    ),
    m.ListOffsetsResponse(
        topics=[m.ListOffsetsTopicResult("orders", [m.ListOffsetsPartitionResult(0, ErrorCode.NONE, 1000, 17)])]
    ),
    m.DescribeTopicResponse(
        topics=[
            m.DescribedTopic(ErrorCode.NONE, "orders", [_PARTITION], {"retention.ms": "1000"}),
            m.DescribedTopic(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "nope", [], {}),
        ]
    ),
    m.DescribeClusterResponse(
        error_code=ErrorCode.NONE,
        cluster_id="c-1",
        controller_id=2,
        brokers=[m.DescribedBroker(1, "h1", 9292, False), m.DescribedBroker(2, "h2", 9392, True)],
    ),
    m.RaftVoteResponse(),
    m.RaftAppendEntriesResponse(),
    m.RaftInstallSnapshotResponse(),
    m.BrokerRegistrationResponse(error_code=ErrorCode.NOT_CONTROLLER, error_message="leader is 3", controller_id=3),
    m.BrokerHeartbeatResponse(error_code=ErrorCode.NONE, controller_id=1, fenced=True),
    m.DescribeQuorumResponse(
        leader_id=1, term=7, commit_index=42, last_index=43,
        voters=[m.QuorumReplica(1, 43, 0, "leader", True), m.QuorumReplica(2, 40, 3, "replicate", True)],
        observers=[m.QuorumReplica(4, 0, 43, "probe", False)],
    ),
    m.OffsetsForLeaderEpochResponse(topics=[("t", [m.EpochEndOffset(0, ErrorCode.NONE, 3, 120),
                                                   m.EpochEndOffset(1, ErrorCode.FENCED_LEADER_EPOCH)])]),
    m.AlterPartitionResponse(controller_id=2, topics=[("t", [
        m.IsrChangeResult(0, ErrorCode.NONE, None, 1, 5, 10, [1, 2]),
        m.IsrChangeResult(1, ErrorCode.INVALID_UPDATE_VERSION, "changed", 1, 5, 11, [1, 2, 3])])]),
    m.ControlledShutdownResponse(controller_id=1, partitions_remaining=2),
    m.InitProducerIdResponse(producer_id=4000, producer_epoch=0),
    # consumer groups
    m.FindCoordinatorResponse(node_id=2, host="h2", port=9392),
    m.JoinGroupResponse(generation=4, member_id="m-1", heartbeat_interval_ms=3000),
    m.SyncGroupResponse(generation=4, assignment=[m.TopicPartitions("orders", [0, 1])], pending=True),
    m.HeartbeatResponse(error_code=ErrorCode.NONE, generation=5, sync=True),
    m.LeaveGroupResponse(error_code=ErrorCode.UNKNOWN_MEMBER_ID, error_message="gone"),
    m.OffsetCommitResponse(topics=[m.OffsetCommitTopicResult("orders", [m.PartitionError(0, ErrorCode.NONE)])]),
    m.OffsetFetchResponse(topics=[m.OffsetFetchTopic("orders", [m.OffsetFetchPartition(0, 42, "meta"),
                                                                m.OffsetFetchPartition(1, -1)])]),
    m.ListGroupsResponse(groups=[m.ListedGroup("billing", "Stable", 2)]),
    m.DescribeGroupsResponse(groups=[m.DescribedGroup(
        "billing", ErrorCode.NONE, None, "Stable", 4, "sticky",
        [m.DescribedMember("m-1", None, "c", "127.0.0.1", ["orders"], [m.TopicPartitions("orders", [0])])],
        [m.DescribedOffset("orders", 0, 42, "")])]),
    m.SaslHandshakeResponse(mechanisms=["SCRAM-SHA-256"]),
    m.SaslAuthenticateResponse(error_code=ErrorCode.SASL_AUTHENTICATION_FAILED, error_message="no", auth_bytes=b""),
    m.DescribeUserScramCredentialsResponse(users=[m.ScramCredentialInfo("alice", "SCRAM-SHA-256", 8192)]),
    m.AlterUserScramCredentialsResponse(results=[m.UserResult("bob", ErrorCode.RESOURCE_NOT_FOUND, "no user")]),
    m.DescribeAclsResponse(acls=[m.AclBinding("User:*", "group", "bill", "prefixed", "read", "deny")]),
    m.CreateAclsResponse(results=[m.AclResult(ErrorCode.NONE, None)]),
    m.DeleteAclsResponse(results=[m.AclDeleteResult(ErrorCode.NONE, None, [
        m.AclBinding("User:alice", "cluster", "cluster", "literal", "alter", "allow")])]),
    m.AddPartitionsToTxnResponse(topics=[m.TxnPartitionsResult("orders", [
        m.PartitionError(0, ErrorCode.NONE), m.PartitionError(3, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)])]),
    m.AddOffsetsToTxnResponse(error_code=ErrorCode.PRODUCER_FENCED, error_message="fenced"),
    m.EndTxnResponse(),
    m.WriteTxnMarkersResponse(markers=[m.TxnMarkerResult(7, [m.TxnPartitionsResult("orders", [
        m.PartitionError(0, ErrorCode.NONE)])])]),
    m.TxnOffsetCommitResponse(error_code=ErrorCode.ILLEGAL_GENERATION, error_message="rebalanced"),
    m.FetchResponse(topics=[m.FetchTopicResult("t", [
        m.FetchPartitionResult(0, ErrorCode.NONE, 100, 90, 0, b"batches", [(7, 12), (9, 40)])])]),
]


def _name(message: object) -> str:
    return type(message).__name__


def test_every_registered_api_has_a_sample_request_and_response():
    assert {r.API_KEY for r in REQUESTS} == set(m.MESSAGE_TYPES)
    assert {r.API_KEY for r in RESPONSES} == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("request_message", REQUESTS, ids=_name)
def test_request_round_trips_through_frames(request_message):
    data = wire(m.encode_request_message(request_message, correlation_id=99))

    frame = decode_three_ways(data, is_request=True)
    decoded = m.decode_request(frame)

    assert frame.api_key == request_message.API_KEY
    assert frame.correlation_id == 99
    assert type(decoded) is type(request_message)
    assert decoded == request_message


@pytest.mark.parametrize("response_message", RESPONSES, ids=_name)
def test_response_round_trips_through_frames(response_message):
    data = wire(m.encode_response_message(response_message, correlation_id=-5))

    frame = decode_three_ways(data, is_request=False)
    decoded = m.decode_response(response_message.API_KEY, frame)

    assert frame.correlation_id == -5
    assert type(decoded) is type(response_message)
    assert decoded == response_message


def _decode_request_bytes(data: bytes) -> m.Request:
    decoder = FrameDecoder(1 << 20, True)
    decoder.feed(data)
    return m.decode_request(decoder.next_frame())


def test_produce_records_are_zero_copy_slices_of_the_frame_payload():
    request = m.ProduceRequest(
        acks=1, topics=[m.ProduceTopic("t", [m.ProducePartition(0, b"aaaa"), m.ProducePartition(1, b"bb")])]
    )
    decoder = FrameDecoder(1 << 20, True)
    decoder.feed(wire(m.encode_request_message(request, 1)))
    frame = decoder.next_frame()
    decoded = m.decode_request(frame)
    first, second = (p.records for p in decoded.topics[0].partitions)
    assert isinstance(first, memoryview) and isinstance(second, memoryview)
    assert first.obj is frame.payload.obj and second.obj is frame.payload.obj
    assert (bytes(first), bytes(second)) == (b"aaaa", b"bb")


def test_records_given_as_several_pieces_are_sent_without_joining():
    pieces = [b"batch-1", memoryview(b"batch-2"), bytearray(b"batch-3")]
    response = m.FetchResponse(topics=[m.FetchTopicResult("t", [m.FetchPartitionResult(0, 0, 3, 3, 0, pieces)])])
    parts = m.encode_response_message(response, 4)
    assert parts[1:] == pieces and all(a is b for a, b in zip(parts[1:], pieces))
    frame = decode_three_ways(wire(parts), is_request=False)
    decoded = m.decode_response(m.ApiKey.FETCH, frame)
    assert bytes(decoded.topics[0].partitions[0].records) == b"batch-1batch-2batch-3"


def test_decoded_produce_request_re_encodes_to_the_same_bytes():
    request = REQUESTS[5]
    data = wire(m.encode_request_message(request, 8))
    assert wire(m.encode_request_message(_decode_request_bytes(data), 8)) == data


# --- malformed controls and payloads ----------------------------------------------------------


def _request_frame(api_key: int, control: object, payload: bytes = b"", api_version: int = 0) -> RequestFrame:
    decoder = FrameDecoder(1 << 20, True)
    decoder.feed(wire(encode_request(api_key, api_version, 1, control, [payload])))
    return decoder.next_frame()


@pytest.mark.parametrize(
    "api_key, control, message",
    [
        (m.ApiKey.PRODUCE, [1, 1000], "PRODUCE request: control must be a list of 3 fields, got list of 2 items"),
        (m.ApiKey.PRODUCE, {"acks": 1}, "control must be a list of 3 fields, got dict of 1 entries"),
        (m.ApiKey.PRODUCE, [True, 1000, []], "acks must be an int in [-32768, 32767], got bool True"),
        (m.ApiKey.PRODUCE, [1, 1000, [["t", [["0", 0]]]]], "topics[].partitions[].partition must be an int"),
        (m.ApiKey.PRODUCE, [1, 1000, [[7, []]]], "topics[].topic must be a str, got int 7"),
        (m.ApiKey.PRODUCE, [1, 2**31, []], "timeout_ms must be an int in [-2147483648, 2147483647], got int 2147483648"),
        (m.ApiKey.FETCH, [-1, 500, 1, 100, 2, []], "isolation_level must be 0 (read_uncommitted) or 1"),
        (m.ApiKey.FETCH, [-1, 500, 1, 100, 0, [["t", [[0, 1.5, 1, -1]]]]], "fetch_offset must be an int"),
        (m.ApiKey.METADATA, ["orders", False], "topics must be a list, got str 'orders'"),
        (m.ApiKey.METADATA, [None, 1], "allow_auto_topic_creation must be a bool, got int 1"),
        (m.ApiKey.CREATE_TOPICS, [[["t", 1, 1, {"a": 1}]], 10, False], "topics[].configs['a'] must be a str"),
        (m.ApiKey.CREATE_TOPICS, [[["t", 1, 1, {"a": "b"}]], 10, None], "validate_only must be a bool"),
        (m.ApiKey.DESCRIBE_CLUSTER, [1], "control must be a list of 0 fields"),
        (m.ApiKey.API_VERSIONS, None, "control must be a list of 2 fields, got NoneType None"),
    ],
)
def test_malformed_request_controls_raise_invalid_request_with_the_field_path(api_key, control, message):
    with pytest.raises(InvalidRequestError) as excinfo:
        m.decode_request(_request_frame(api_key, control))
    assert message in str(excinfo.value)
    assert excinfo.value.error_code == ErrorCode.INVALID_REQUEST


def test_produce_records_length_past_the_payload_is_refused():
    frame = _request_frame(m.ApiKey.PRODUCE, [1, 1000, [["t", [[0, 10]]]]], b"12345")
    with pytest.raises(InvalidRequestError, match="records_length is 10 bytes but only 5 payload bytes remain"):
        m.decode_request(frame)


def test_payload_bytes_no_control_field_describes_are_refused():
    frame = _request_frame(m.ApiKey.PRODUCE, [1, 1000, [["t", [[0, 3]]]]], b"12345")
    with pytest.raises(InvalidRequestError, match="payload has 2 trailing bytes"):
        m.decode_request(frame)
    frame = _request_frame(m.ApiKey.METADATA, [None, False], b"x")
    with pytest.raises(InvalidRequestError, match="METADATA request: payload has 1 trailing bytes"):
        m.decode_request(frame)


def test_malformed_response_controls_raise_invalid_response():
    decoder = FrameDecoder(1024, False)
    decoder.feed(wire(encode_response(1, [0, [[18, 0]]])))
    with pytest.raises(InvalidResponseError, match=r"API_VERSIONS response: api_versions\[\] must be a list of 3 fields"):
        m.decode_response(m.ApiKey.API_VERSIONS, decoder.next_frame())


# --- registry and versions --------------------------------------------------------------------


def test_api_keys_follow_kafka_numbering_and_tidelog_keys_start_at_1000():
    kafka = {
        "PRODUCE": 0, "FETCH": 1, "LIST_OFFSETS": 2, "METADATA": 3, "OFFSET_COMMIT": 8, "OFFSET_FETCH": 9,
        "FIND_COORDINATOR": 10, "JOIN_GROUP": 11, "HEARTBEAT": 12, "LEAVE_GROUP": 13, "SYNC_GROUP": 14,
        "DESCRIBE_GROUPS": 15, "LIST_GROUPS": 16, "API_VERSIONS": 18, "CREATE_TOPICS": 19,
        "DELETE_TOPICS": 20, "INIT_PRODUCER_ID": 22, "ALTER_TOPIC_CONFIGS": 44, "RAFT_VOTE": 52, "ALTER_PARTITION": 56,
        "DESCRIBE_CLUSTER": 60, "BROKER_REGISTRATION": 62, "BROKER_HEARTBEAT": 63, "DESCRIBE_QUORUM": 55,
        "OFFSETS_FOR_LEADER_EPOCH": 23, "CONTROLLED_SHUTDOWN": 7, "ADD_PARTITIONS_TO_TXN": 24,
        "ADD_OFFSETS_TO_TXN": 25, "END_TXN": 26, "WRITE_TXN_MARKERS": 27, "TXN_OFFSET_COMMIT": 28,
        "DESCRIBE_TRANSACTIONS": 65,
    }  # fmt: skip
    for name, number in kafka.items():
        assert m.ApiKey[name] == number
    own = {key for key in m.ApiKey if key.name not in kafka}
    assert own == {m.ApiKey.DESCRIBE_TOPIC, m.ApiKey.RAFT_APPEND_ENTRIES, m.ApiKey.RAFT_INSTALL_SNAPSHOT}
    assert all(key >= m.TIDELOG_API_KEYS_START for key in own)


def test_registry_and_version_table_agree():
    assert set(m.API_VERSIONS) == set(m.MESSAGE_TYPES)
    for api_key, (request_cls, response_cls) in m.MESSAGE_TYPES.items():
        assert request_cls.API_KEY == response_cls.API_KEY == api_key
        assert request_cls.IS_REQUEST and not response_cls.IS_REQUEST
        assert m.API_VERSIONS[api_key] == (0, 0)


def test_register_api_refuses_a_second_registration():
    with pytest.raises(ValueError, match="already registered"):
        m.register_api(m.ProduceRequest, m.ProduceResponse)
    with pytest.raises(ValueError, match="different API keys"):
        m.register_api(m.ProduceRequest, m.FetchResponse)


def test_unknown_api_key_is_unsupported_api():
    with pytest.raises(UnsupportedApiError, match=r"api key 777 \(777\) is unknown") as excinfo:
        m.decode_request(_request_frame(777, []))
    assert excinfo.value.error_code == ErrorCode.UNSUPPORTED_API


def test_reserved_api_key_is_unsupported_api():
    with pytest.raises(UnsupportedApiError, match=r"DESCRIBE_TRANSACTIONS \(65\) is reserved but not implemented"):
        m.decode_request(_request_frame(m.ApiKey.DESCRIBE_TRANSACTIONS, []))


def test_unsupported_version_is_refused_for_requests_and_responses():
    with pytest.raises(UnsupportedVersionError, match="METADATA version 3 is not supported") as excinfo:
        m.decode_request(_request_frame(m.ApiKey.METADATA, [None, False], api_version=3))
    assert excinfo.value.error_code == ErrorCode.UNSUPPORTED_VERSION
    decoder = FrameDecoder(1024, False)
    decoder.feed(wire(m.encode_response_message(m.DescribeClusterResponse(), 1)))
    with pytest.raises(UnsupportedVersionError):
        m.decode_response(m.ApiKey.DESCRIBE_CLUSTER, decoder.next_frame(), api_version=-1)


def test_error_response_is_raised_as_request_rejected_with_the_broker_code():
    data = wire(m.encode_error_response(5, ErrorCode.UNSUPPORTED_VERSION, "METADATA version 3 is not supported"))
    frame = decode_three_ways(data, is_request=False)
    with pytest.raises(RequestRejectedError, match="broker rejected the METADATA request: METADATA version 3") as excinfo:
        m.decode_response(m.ApiKey.METADATA, frame)
    assert excinfo.value.error_code is ErrorCode.UNSUPPORTED_VERSION


def test_malformed_error_response_is_invalid_response():
    decoder = FrameDecoder(1024, False)
    decoder.feed(wire(encode_response(5, {"error_code": "x"})))
    with pytest.raises(InvalidResponseError, match="error response must be a map"):
        m.decode_response(m.ApiKey.METADATA, decoder.next_frame())


# --- fuzzing ----------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
_objects = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=20,
)


def _fuzz_decode(api_key: int, control: object, payload: bytes, is_request: bool) -> None:
    """Decode through real frames; only ProtocolError subclasses may escape."""
    if is_request:
        parts = encode_request(api_key, 0, 1, control, [payload])
    else:
        parts = encode_response(1, control, [payload])
    decoder = FrameDecoder(1 << 20, is_request)
    decoder.feed(wire(parts))
    frame = decoder.next_frame()
    try:
        if is_request:
            m.decode_request(frame)
        else:
            m.decode_response(api_key, frame)
    except ProtocolError:
        pass


_api_keys = st.sampled_from(sorted(m.MESSAGE_TYPES))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(api_key=_api_keys, control=_objects, payload=st.binary(max_size=16), is_request=st.booleans())
def test_arbitrary_controls_raise_only_protocol_errors(api_key, control, payload, is_request):
    _fuzz_decode(api_key, control, payload, is_request)


def _paths(node: object, path: tuple = ()) -> list[tuple]:
    """Every position in a nested control: list indexes and dict keys."""
    found = [path]
    if isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_paths(child, path + (index,)))
    elif isinstance(node, dict):
        for key, child in node.items():
            found.extend(_paths(child, path + (key,)))
    return found


def _replace(node: object, path: tuple, value: object) -> object:
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


_SAMPLES = [(r.API_KEY, r.to_control(), b"".join(bytes(p) for p in r.payload_parts()), True) for r in REQUESTS] + [
    (r.API_KEY, r.to_control(), b"".join(bytes(p) for p in r.payload_parts()), False) for r in RESPONSES
]


def _get(node: object, path: tuple) -> object:
    for step in path:
        node = node[step]
    return node


_BAD_VALUES = [None, True, 0, -1, 2**64 - 1, -(2**63), 1.5, "", "x" * 300, b"\x00", [], [0], [[]], {}, {"k": "v"}]


@pytest.mark.parametrize("sample", _SAMPLES, ids=lambda s: f"{m.api_name(s[0])}-{'request' if s[3] else 'response'}")
def test_every_field_of_every_message_replaced_by_bad_values_raises_only_protocol_errors(sample):
    """Deterministic sweep: each position in a valid control gets each bad value, and each list
    gets one item more and one fewer; decoding must fail cleanly or succeed."""
    api_key, control, payload, is_request = sample
    for path in _paths(control):
        original = _get(control, path)
        candidates = list(_BAD_VALUES)
        if isinstance(original, list):
            candidates += [original + [0], original[:-1]]
        for value in candidates:
            _fuzz_decode(api_key, _replace(copy.deepcopy(control), path, value), payload, is_request)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(_SAMPLES), where=st.integers(0, 10_000), value=_objects, cut=st.integers(0, 64))
def test_mutated_valid_controls_raise_only_protocol_errors(sample, where, value, cut):
    api_key, control, payload, is_request = sample
    control = copy.deepcopy(control)
    paths = _paths(control)
    control = _replace(control, paths[where % len(paths)], value)
    _fuzz_decode(api_key, control, payload[: len(payload) - cut] if cut < len(payload) else payload, is_request)


# --- limits: topic names and defaults ----------------------------------------------------------


@pytest.mark.parametrize("name", ["orders", "a", "A-z_0.9", "..a", "x" * limits.TOPIC_NAME_LENGTH_MAX, "_"])
def test_valid_topic_names_pass(name):
    limits.validate_topic_name(name)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "topic name is empty"),
        (".", "topic name '.' is reserved"),
        ("..", "topic name '..' is reserved"),
        ("x" * 250, "topic name is 250 characters long; the maximum is 249"),
        ("a b", "contains ' ' at position 1"),
        ("orders\n", "contains '\\n' at position 6"),
        ("caf\u00e9", "contains '\u00e9' at position 3"),
        ("a/b", "contains '/' at position 1"),
        (7, "topic name must be a str, got int"),
    ],
)
def test_invalid_topic_names_say_which_rule_they_break(name, reason):
    with pytest.raises(InvalidTopicNameError) as excinfo:
        limits.validate_topic_name(name)
    assert reason in str(excinfo.value)
    assert excinfo.value.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION


def test_default_limits_fit_together():
    assert limits.FETCH_BYTES_MAX_DEFAULT < limits.FRAME_BYTES_MAX_DEFAULT
    assert limits.BATCH_BYTES_MAX_DEFAULT <= limits.FETCH_PARTITION_BYTES_MAX_DEFAULT <= limits.FETCH_BYTES_MAX_DEFAULT
    assert limits.BATCH_BYTES_MAX_DEFAULT < limits.FRAME_BYTES_MAX_DEFAULT
    assert limits.FRAME_BYTES_MAX_DEFAULT <= limits.FRAME_BYTES_MAX_CEILING
    assert 1 <= limits.IN_FLIGHT_REQUESTS_MAX_DEFAULT <= 5
    assert limits.FETCH_MAX_WAIT_MS_DEFAULT < limits.REQUEST_TIMEOUT_MS_DEFAULT <= limits.REQUEST_TIMEOUT_MS_MAX
    assert limits.TOPIC_NAME_LENGTH_MAX == 249
