"""decode_request / decode_response fuzzing for every registered API.

Structure-aware: draw a valid message, take its to_control(), mutate one node (wrong type, huge
or negative int, deep nesting, long string, extra or missing field) and/or the payload bytes,
frame it and decode it. Only ProtocolError subclasses may escape, and whatever decodes must
re-encode to a message that decodes to the same thing."""

from __future__ import annotations

import copy

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from client.protocol import messages as m
from client.protocol.errors import ControlEncodeError, ProtocolError
from client.protocol.frames import NEED_DATA, FrameDecoder, encode_request, encode_response
from tests.fuzz.conftest import fuzz_settings, fuzz_timeout

pytestmark = pytest.mark.timeout(fuzz_timeout(90))

I16 = st.integers(-(2**15), 2**15 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U16 = st.integers(0, 2**16 - 1)
NAME = st.text(max_size=12)
OPT_NAME = st.none() | NAME
CONFIGS = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
RECORDS = st.binary(max_size=40)


def _few(strategy, max_size: int = 3):
    return st.lists(strategy, max_size=max_size)


_partition_metadata = st.builds(m.PartitionMetadata, I16, I32, I32, I32, _few(I32), _few(I32))
_topic_result = st.builds(m.TopicResult, NAME, I16, OPT_NAME)

# One strategy per registered API: (request, response). A newly registered API without an entry
# fails test_every_registered_api_is_fuzzed, so the suite grows with the protocol.
_topic_partitions = st.builds(m.TopicPartitions, NAME, _few(I32))

MESSAGE_STRATEGIES = {
    m.ApiKey.API_VERSIONS: (
        st.builds(m.ApiVersionsRequest, client_software_name=NAME, client_software_version=NAME),
        st.builds(m.ApiVersionsResponse, error_code=I16,
                  api_versions=_few(st.builds(m.ApiVersionRange, I16, I16, I16))),
    ),
    m.ApiKey.METADATA: (
        st.builds(m.MetadataRequest, topics=st.none() | _few(NAME), allow_auto_topic_creation=st.booleans()),
        st.builds(m.MetadataResponse, brokers=_few(st.builds(m.BrokerMetadata, I32, NAME, U16)),
                  controller_id=I32, cluster_id=OPT_NAME,
                  topics=_few(st.builds(m.TopicMetadata, I16, NAME, _few(_partition_metadata)))),
    ),
    m.ApiKey.DESCRIBE_TOPIC: (
        st.builds(m.DescribeTopicRequest, names=_few(NAME)),
        st.builds(m.DescribeTopicResponse,
                  topics=_few(st.builds(m.DescribedTopic, I16, NAME, _few(_partition_metadata), CONFIGS))),
    ),
    m.ApiKey.DESCRIBE_CLUSTER: (
        st.builds(m.DescribeClusterRequest),
        st.builds(m.DescribeClusterResponse, error_code=I16, cluster_id=OPT_NAME, controller_id=I32,
                  brokers=_few(st.builds(m.DescribedBroker, I32, NAME, U16, st.booleans()))),
    ),
    m.ApiKey.CREATE_TOPICS: (
        st.builds(m.CreateTopicsRequest, topics=_few(st.builds(m.NewTopic, NAME, I32, I16, CONFIGS)),
                  timeout_ms=I32, validate_only=st.booleans()),
        st.builds(m.CreateTopicsResponse, topics=_few(_topic_result)),
    ),
    m.ApiKey.DELETE_TOPICS: (
        st.builds(m.DeleteTopicsRequest, names=_few(NAME), timeout_ms=I32),
        st.builds(m.DeleteTopicsResponse, topics=_few(_topic_result)),
    ),
    m.ApiKey.ALTER_TOPIC_CONFIGS: (
        st.builds(m.AlterTopicConfigsRequest,
                  topics=_few(st.builds(m.TopicConfigAlteration, NAME, CONFIGS, _few(NAME))),
                  timeout_ms=I32, validate_only=st.booleans()),
        st.builds(m.AlterTopicConfigsResponse, topics=_few(_topic_result)),
    ),
    m.ApiKey.PRODUCE: (
        st.builds(m.ProduceRequest, acks=I16, timeout_ms=I32,
                  topics=_few(st.builds(m.ProduceTopic, NAME, _few(st.builds(m.ProducePartition, I32, RECORDS))))),
        st.builds(m.ProduceResponse, throttle_time_ms=I32, topics=_few(st.builds(
            m.ProduceTopicResult, NAME, _few(st.builds(m.ProducePartitionResult, I32, I16, OPT_NAME, I64, I64, I64))))),
    ),
    m.ApiKey.FETCH: (
        st.builds(m.FetchRequest, replica_id=I32, max_wait_ms=I32, min_bytes=I32, max_bytes=I32,
                  isolation_level=st.sampled_from((m.READ_UNCOMMITTED, m.READ_COMMITTED)),
                  topics=_few(st.builds(m.FetchTopic, NAME, _few(st.builds(m.FetchPartition, I32, I64, I32, I32))))),
        st.builds(m.FetchResponse, throttle_time_ms=I32, error_code=I16, topics=_few(st.builds(
            m.FetchTopicResult, NAME, _few(st.builds(m.FetchPartitionResult, I32, I16, I64, I64, I64, RECORDS,
                                                     st.none() | _few(st.tuples(I64, I64))))))),
    ),
    m.ApiKey.LIST_OFFSETS: (
        st.builds(m.ListOffsetsRequest, replica_id=I32,
                  isolation_level=st.sampled_from((m.READ_UNCOMMITTED, m.READ_COMMITTED)),
                  topics=_few(st.builds(m.ListOffsetsTopic, NAME, _few(st.builds(m.ListOffsetsPartition, I32, I64))))),
        st.builds(m.ListOffsetsResponse, topics=_few(st.builds(
            m.ListOffsetsTopicResult, NAME, _few(st.builds(m.ListOffsetsPartitionResult, I32, I16, I64, I64))))),
    ),
    # Broker to broker (the metadata quorum). The Raft message is opaque to the codec.
    **{key: (st.builds(request, message=_few(I64 | RECORDS, 8)), st.builds(response))
       for key, request, response in (
           (m.ApiKey.RAFT_VOTE, m.RaftVoteRequest, m.RaftVoteResponse),
           (m.ApiKey.RAFT_APPEND_ENTRIES, m.RaftAppendEntriesRequest, m.RaftAppendEntriesResponse),
           (m.ApiKey.RAFT_INSTALL_SNAPSHOT, m.RaftInstallSnapshotRequest, m.RaftInstallSnapshotResponse))},
    m.ApiKey.BROKER_REGISTRATION: (
        st.builds(m.BrokerRegistrationRequest, node_id=I32, host=NAME, port=U16, incarnation=NAME),
        st.builds(m.BrokerRegistrationResponse, error_code=I16, error_message=OPT_NAME, controller_id=I32),
    ),
    m.ApiKey.BROKER_HEARTBEAT: (
        st.builds(m.BrokerHeartbeatRequest, node_id=I32, incarnation=NAME),
        st.builds(m.BrokerHeartbeatResponse, error_code=I16, error_message=OPT_NAME, controller_id=I32,
                  fenced=st.booleans()),
    ),
    m.ApiKey.DESCRIBE_QUORUM: (
        st.builds(m.DescribeQuorumRequest),
        st.builds(m.DescribeQuorumResponse, error_code=I16, error_message=OPT_NAME, leader_id=I32, term=I64,
                  commit_index=I64, last_index=I64,
                  voters=_few(st.builds(m.QuorumReplica, I32, I64, I64, NAME, st.booleans())),
                  observers=_few(st.builds(m.QuorumReplica, I32, I64, I64, NAME, st.booleans()))),
    ),
    # Replication.
    m.ApiKey.OFFSETS_FOR_LEADER_EPOCH: (
        st.builds(m.OffsetsForLeaderEpochRequest, replica_id=I32,
                  topics=_few(st.tuples(NAME, _few(st.builds(m.EpochQuery, I32, I32, I32))))),
        st.builds(m.OffsetsForLeaderEpochResponse,
                  topics=_few(st.tuples(NAME, _few(st.builds(m.EpochEndOffset, I32, I16, I32, I64))))),
    ),
    m.ApiKey.INIT_PRODUCER_ID: (
        st.builds(m.InitProducerIdRequest, transactional_id=OPT_NAME, transaction_timeout_ms=I32, producer_id=I64,
                  producer_epoch=I16),
        st.builds(m.InitProducerIdResponse, throttle_time_ms=I32, error_code=I16, error_message=OPT_NAME,
                  producer_id=I64, producer_epoch=I16),
    ),
    m.ApiKey.CONTROLLED_SHUTDOWN: (
        st.builds(m.ControlledShutdownRequest, broker_id=I32, incarnation=NAME),
        st.builds(m.ControlledShutdownResponse, error_code=I16, error_message=OPT_NAME, controller_id=I32,
                  partitions_remaining=I32),
    ),
    m.ApiKey.ALTER_PARTITION: (
        st.builds(m.AlterPartitionRequest, broker_id=I32, incarnation=NAME,
                  topics=_few(st.tuples(NAME, _few(st.builds(m.IsrChange, I32, I32, I32, _few(I32)))))),
        st.builds(m.AlterPartitionResponse, error_code=I16, error_message=OPT_NAME, controller_id=I32,
                  topics=_few(st.tuples(NAME, _few(st.builds(
                      m.IsrChangeResult, I32, I16, OPT_NAME, I32, I32, I32, _few(I32)))))),
    ),
    # consumer groups
    m.ApiKey.FIND_COORDINATOR: (
        st.builds(m.FindCoordinatorRequest, key=NAME),
        st.builds(m.FindCoordinatorResponse, error_code=I16, error_message=OPT_NAME, node_id=I32, host=NAME, port=U16),
    ),
    m.ApiKey.JOIN_GROUP: (
        st.builds(m.JoinGroupRequest, group_id=NAME, member_id=NAME, group_instance_id=OPT_NAME, client_id=NAME,
                  session_timeout_ms=I32, rebalance_timeout_ms=I32, topics=_few(NAME), assignor=NAME,
                  owned=_few(_topic_partitions)),
        st.builds(m.JoinGroupResponse, error_code=I16, error_message=OPT_NAME, generation=I32, member_id=NAME,
                  heartbeat_interval_ms=I32),
    ),
    m.ApiKey.SYNC_GROUP: (
        st.builds(m.SyncGroupRequest, group_id=NAME, member_id=NAME, generation=I32, owned=_few(_topic_partitions)),
        st.builds(m.SyncGroupResponse, error_code=I16, error_message=OPT_NAME, generation=I32,
                  assignment=_few(_topic_partitions), pending=st.booleans()),
    ),
    m.ApiKey.HEARTBEAT: (
        st.builds(m.HeartbeatRequest, group_id=NAME, member_id=NAME, generation=I32),
        st.builds(m.HeartbeatResponse, error_code=I16, error_message=OPT_NAME, generation=I32, sync=st.booleans()),
    ),
    m.ApiKey.LEAVE_GROUP: (
        st.builds(m.LeaveGroupRequest, group_id=NAME, member_id=NAME, group_instance_id=OPT_NAME, reason=NAME),
        st.builds(m.LeaveGroupResponse, error_code=I16, error_message=OPT_NAME),
    ),
    m.ApiKey.OFFSET_COMMIT: (
        st.builds(m.OffsetCommitRequest, group_id=NAME, member_id=NAME, generation=I32, topics=_few(st.builds(
            m.OffsetCommitTopic, NAME, _few(st.builds(m.OffsetCommitPartition, I32, I64, NAME))))),
        st.builds(m.OffsetCommitResponse, error_code=I16, error_message=OPT_NAME, topics=_few(st.builds(
            m.OffsetCommitTopicResult, NAME, _few(st.builds(m.PartitionError, I32, I16))))),
    ),
    m.ApiKey.OFFSET_FETCH: (
        st.builds(m.OffsetFetchRequest, group_id=NAME, topics=st.none() | _few(_topic_partitions)),
        st.builds(m.OffsetFetchResponse, error_code=I16, error_message=OPT_NAME, topics=_few(st.builds(
            m.OffsetFetchTopic, NAME, _few(st.builds(m.OffsetFetchPartition, I32, I64, NAME, I16))))),
    ),
    m.ApiKey.LIST_GROUPS: (
        st.builds(m.ListGroupsRequest),
        st.builds(m.ListGroupsResponse, error_code=I16, error_message=OPT_NAME,
                  groups=_few(st.builds(m.ListedGroup, NAME, NAME, I32))),
    ),
    m.ApiKey.DESCRIBE_GROUPS: (
        st.builds(m.DescribeGroupsRequest, group_ids=_few(NAME)),
        st.builds(m.DescribeGroupsResponse, groups=_few(st.builds(
            m.DescribedGroup, NAME, I16, OPT_NAME, NAME, I32, NAME,
            _few(st.builds(m.DescribedMember, NAME, OPT_NAME, NAME, NAME, _few(NAME), _few(_topic_partitions))),
            _few(st.builds(m.DescribedOffset, NAME, I32, I64, NAME))))),
    ),
}

_acl = st.builds(m.AclBinding, NAME, NAME, NAME, NAME, NAME, NAME, NAME)
_acl_filter = st.builds(m.AclFilter, OPT_NAME, OPT_NAME, OPT_NAME, OPT_NAME, OPT_NAME, OPT_NAME, OPT_NAME)
MESSAGE_STRATEGIES.update({  # security (broker/security/)
    m.SecurityApiKey.SASL_HANDSHAKE: (
        st.builds(m.SaslHandshakeRequest, mechanism=NAME),
        st.builds(m.SaslHandshakeResponse, error_code=I16, mechanisms=_few(NAME)),
    ),
    m.SecurityApiKey.SASL_AUTHENTICATE: (
        st.builds(m.SaslAuthenticateRequest, auth_bytes=RECORDS),
        st.builds(m.SaslAuthenticateResponse, error_code=I16, error_message=OPT_NAME, auth_bytes=RECORDS,
                  session_lifetime_ms=I64),
    ),
    m.SecurityApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: (
        st.builds(m.DescribeUserScramCredentialsRequest, users=st.none() | _few(NAME)),
        st.builds(m.DescribeUserScramCredentialsResponse, error_code=I16, error_message=OPT_NAME,
                  users=_few(st.builds(m.ScramCredentialInfo, NAME, NAME, I32))),
    ),
    m.SecurityApiKey.ALTER_USER_SCRAM_CREDENTIALS: (
        st.builds(m.AlterUserScramCredentialsRequest,
                  upsertions=_few(st.builds(m.ScramUpsertion, NAME, NAME, I32, RECORDS, RECORDS, RECORDS)),
                  deletions=_few(st.builds(m.ScramDeletion, NAME, NAME))),
        st.builds(m.AlterUserScramCredentialsResponse, results=_few(st.builds(m.UserResult, NAME, I16, OPT_NAME))),
    ),
    m.SecurityApiKey.DESCRIBE_ACLS: (
        st.builds(m.DescribeAclsRequest, filter=_acl_filter),
        st.builds(m.DescribeAclsResponse, error_code=I16, error_message=OPT_NAME, acls=_few(_acl)),
    ),
    m.SecurityApiKey.CREATE_ACLS: (
        st.builds(m.CreateAclsRequest, acls=_few(_acl)),
        st.builds(m.CreateAclsResponse, results=_few(st.builds(m.AclResult, I16, OPT_NAME))),
    ),
    m.SecurityApiKey.DELETE_ACLS: (
        st.builds(m.DeleteAclsRequest, filters=_few(_acl_filter)),
        st.builds(m.DeleteAclsResponse, results=_few(st.builds(m.AclDeleteResult, I16, OPT_NAME, _few(_acl)))),
    ),
})

_txn_results = _few(st.builds(m.TxnPartitionsResult, NAME, _few(st.builds(m.PartitionError, I32, I16))))
MESSAGE_STRATEGIES.update({  # transactions (broker/txn_coordinator.py)
    m.ApiKey.ADD_PARTITIONS_TO_TXN: (
        st.builds(m.AddPartitionsToTxnRequest, transactional_id=NAME, producer_id=I64, producer_epoch=I16,
                  topics=_few(_topic_partitions)),
        st.builds(m.AddPartitionsToTxnResponse, error_code=I16, error_message=OPT_NAME, topics=_txn_results),
    ),
    m.ApiKey.ADD_OFFSETS_TO_TXN: (
        st.builds(m.AddOffsetsToTxnRequest, transactional_id=NAME, producer_id=I64, producer_epoch=I16,
                  group_id=NAME),
        st.builds(m.AddOffsetsToTxnResponse, error_code=I16, error_message=OPT_NAME),
    ),
    m.ApiKey.END_TXN: (
        st.builds(m.EndTxnRequest, transactional_id=NAME, producer_id=I64, producer_epoch=I16,
                  committed=st.booleans()),
        st.builds(m.EndTxnResponse, error_code=I16, error_message=OPT_NAME),
    ),
    m.ApiKey.WRITE_TXN_MARKERS: (
        st.builds(m.WriteTxnMarkersRequest, coordinator_epoch=I32, markers=_few(st.builds(
            m.TxnMarker, I64, I16, st.booleans(), _few(_topic_partitions)))),
        st.builds(m.WriteTxnMarkersResponse, markers=_few(st.builds(m.TxnMarkerResult, I64, _txn_results))),
    ),
    m.ApiKey.TXN_OFFSET_COMMIT: (
        st.builds(m.TxnOffsetCommitRequest, transactional_id=NAME, producer_id=I64, producer_epoch=I16,
                  group_id=NAME, member_id=NAME, generation=I32, topics=_few(st.builds(
                      m.OffsetCommitTopic, NAME, _few(st.builds(m.OffsetCommitPartition, I32, I64, NAME))))),
        st.builds(m.TxnOffsetCommitResponse, error_code=I16, error_message=OPT_NAME, topics=_txn_results),
    ),
})

_API_KEYS = sorted(MESSAGE_STRATEGIES)


def test_every_registered_api_is_fuzzed():
    assert sorted(m.MESSAGE_TYPES) == _API_KEYS


# --- control mutations ----------------------------------------------------------------------

_HUGE_INTS = [2**64 - 1, 2**63, 2**63 - 1, -(2**63), 2**32, 2**32 - 1, 2**31, -(2**31) - 1, 2**16, 2**15, -(2**15) - 1]
_WRONG_TYPES = [None, True, False, 0, 1.5, float("inf"), float("nan"), "", "x", b"", b"\x00\xff", [], [None], {}, {"k": 1}]
_scalar = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=8) | st.binary(max_size=8))
_anything = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=10)


def _paths(node, path=()):
    yield path
    if isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, path + (i,))
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, path + (key,))


def _get(node, path):
    for step in path:
        node = node[step]
    return node


def _set(root, path, value):
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


@st.composite
def _mutated_control(draw, control):
    """One node of `control` changed in one of the ways a hostile or buggy peer might."""
    control = copy.deepcopy(control)
    paths = list(_paths(control))
    path = draw(st.sampled_from(paths), label="path")
    node = _get(control, path)
    kind = draw(st.sampled_from(
        ("wrong_type", "huge_int", "negative", "nest", "long_string", "extra", "missing", "anything", "as_dict")),
        label="kind")
    if kind == "wrong_type":
        value = draw(st.sampled_from(_WRONG_TYPES))
    elif kind == "huge_int":
        value = draw(st.sampled_from(_HUGE_INTS))
    elif kind == "negative":
        value = -abs(node) - 1 if type(node) is int else draw(st.integers(-(2**63), -1))
    elif kind == "nest":
        value = node
        for _ in range(draw(st.integers(1, 400))):  # msgpack refuses to pack deeper than 512
            value = [value]
    elif kind == "long_string":
        size = draw(st.sampled_from((256, 65_536, 1 << 20)))
        value = "x" * size if draw(st.booleans()) else b"\x00" * size
    elif kind == "extra" and isinstance(node, list):
        value = node + [draw(_anything)]
    elif kind == "extra" and isinstance(node, dict):
        value = {**node, draw(st.text(max_size=4)): draw(_anything)}
    elif kind == "missing" and isinstance(node, list) and node:
        value = list(node)
        del value[draw(st.integers(0, len(node) - 1))]
    elif kind == "missing" and isinstance(node, dict) and node:
        value = dict(node)
        value.pop(draw(st.sampled_from(sorted(node))))
    elif kind == "as_dict" and isinstance(node, list):
        value = {str(i): item for i, item in enumerate(node)}
    else:
        value = draw(_anything)
    return _set(control, path, value)


@st.composite
def _mutated_payload(draw, payload: bytes) -> bytes:
    kind = draw(st.sampled_from(("same", "same", "truncate", "extend", "random", "flip")), label="payload")
    if kind == "truncate":
        return payload[: draw(st.integers(0, len(payload)))]
    if kind == "extend":
        return payload + draw(st.binary(min_size=1, max_size=32))
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "flip" and payload:
        at = draw(st.integers(0, len(payload) - 1))
        return payload[:at] + bytes([payload[at] ^ 0xFF]) + payload[at + 1:]
    return payload


# --- decoding through real frames -----------------------------------------------------------


def _frame(is_request: bool, api_key: int, api_version: int, control, payload: bytes):
    try:
        if is_request:
            parts = encode_request(api_key, api_version, 7, control, [payload], max_frame_bytes=1 << 23)
        else:
            parts = encode_response(7, control, [payload], max_frame_bytes=1 << 23)
    except ControlEncodeError:
        return None  # not packable as msgpack (an int over 64 bits): cannot reach a decoder
    decoder = FrameDecoder(1 << 23, is_request)
    decoder.feed(b"".join(bytes(p) for p in parts))
    frame = decoder.next_frame()
    assert frame is not NEED_DATA
    return frame


def _decode(is_request: bool, api_key: int, api_version: int, frame):
    if is_request:
        return m.decode_request(frame)
    return m.decode_response(api_key, frame, api_version)


def _fingerprint(message) -> tuple:
    return type(message), message.to_control(), b"".join(bytes(p) for p in message.payload_parts())


def _check(is_request: bool, api_key: int, api_version: int, control, payload: bytes) -> None:
    frame = _frame(is_request, api_key, api_version, control, payload)
    assume(frame is not None)
    try:
        message = _decode(is_request, api_key, api_version, frame)
    except ProtocolError:
        return
    # It decoded, so it must survive a round trip unchanged: decoding accepted only what it can re-send.
    control2, payload2 = message.to_control(), b"".join(bytes(p) for p in message.payload_parts())
    again = _decode(is_request, api_key, api_version, _frame(is_request, api_key, api_version, control2, payload2))
    assert _fingerprint(again) == _fingerprint(message)


@st.composite
def _sample(draw):
    api_key = draw(st.sampled_from(_API_KEYS), label="api_key")
    is_request = draw(st.booleans(), label="is_request")
    message = draw(MESSAGE_STRATEGIES[api_key][0 if is_request else 1], label="message")
    payload = b"".join(bytes(p) for p in message.payload_parts())
    return api_key, is_request, message.to_control(), payload


@fuzz_settings()
@given(sample=_sample(), data=st.data())
def test_near_valid_controls_raise_only_protocol_errors(sample, data):
    api_key, is_request, control, payload = sample
    control = data.draw(_mutated_control(control), label="control")
    payload = data.draw(_mutated_payload(payload), label="payload")
    _check(is_request, api_key, 0, control, payload)


@fuzz_settings()
@given(sample=_sample(), data=st.data())
def test_valid_controls_with_random_payload_bytes_raise_only_protocol_errors(sample, data):
    api_key, is_request, control, payload = sample
    _check(is_request, api_key, 0, control, data.draw(_mutated_payload(payload), label="payload"))


@fuzz_settings()
@given(is_request=st.booleans(), api_key=st.sampled_from(_API_KEYS) | I16, api_version=I16 | st.just(0),
       control=_anything, payload=st.binary(max_size=64))
def test_arbitrary_keys_versions_and_controls_raise_only_protocol_errors(is_request, api_key, api_version,
                                                                         control, payload):
    _check(is_request, api_key, api_version, control, payload)


@fuzz_settings(0.5)
@given(api_key=st.sampled_from(_API_KEYS), code=_anything, message=_anything,
       extra=st.dictionaries(st.text(max_size=12) | st.binary(max_size=4), _anything, max_size=3))
def test_mutated_error_responses_raise_only_protocol_errors(api_key, code, message, extra):
    control = {"error_code": code, "error_message": message, **extra}
    frame = _frame(False, api_key, 0, control, b"")
    assume(frame is not None)
    with pytest.raises(ProtocolError):
        m.decode_response(api_key, frame)
