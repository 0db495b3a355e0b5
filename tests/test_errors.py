"""The wire error table (numbers, messages, retriable flags) and the SDK exceptions built on it."""

from __future__ import annotations

import re

import pytest

import client.errors as errors
from client.errors import (
    BrokerUnreachableError,
    ConnectionClosedError,
    IllegalStateError,
    MessageTooLargeError,
    NotLeaderOrFollowerError,
    RecordTooLargeError,
    RetriableError,
    TidelogError,
    TidelogTimeoutError,
    UnknownTopicOrPartitionError,
    class_for_code,
    error_for_code,
)
from client.protocol import errors as wire
from client.protocol.errors import TIDELOG_CODES_START, ErrorCode

pytestmark = pytest.mark.timeout(60)

# Kafka's numbers for the codes tidelog shares with it (kafka.apache.org protocol error table).
KAFKA_NUMBERS = {
    "UNKNOWN_SERVER_ERROR": -1, "NONE": 0, "OFFSET_OUT_OF_RANGE": 1, "CORRUPT_MESSAGE": 2,
    "UNKNOWN_TOPIC_OR_PARTITION": 3, "INVALID_FETCH_SIZE": 4, "LEADER_NOT_AVAILABLE": 5,
    "NOT_LEADER_OR_FOLLOWER": 6, "REQUEST_TIMED_OUT": 7, "BROKER_NOT_AVAILABLE": 8,
    "MESSAGE_TOO_LARGE": 10, "NETWORK_EXCEPTION": 13, "COORDINATOR_NOT_AVAILABLE": 15, "NOT_COORDINATOR": 16,
    "INVALID_TOPIC_EXCEPTION": 17, "RECORD_LIST_TOO_LARGE": 18, "NOT_ENOUGH_REPLICAS": 19,
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND": 20, "INVALID_REQUIRED_ACKS": 21, "ILLEGAL_GENERATION": 22,
    "UNKNOWN_MEMBER_ID": 25, "REBALANCE_IN_PROGRESS": 27, "TOPIC_AUTHORIZATION_FAILED": 29,
    "GROUP_AUTHORIZATION_FAILED": 30, "CLUSTER_AUTHORIZATION_FAILED": 31, "UNSUPPORTED_VERSION": 35,
    "TOPIC_ALREADY_EXISTS": 36, "INVALID_PARTITIONS": 37, "INVALID_REPLICATION_FACTOR": 38,
    "INVALID_CONFIG": 40, "NOT_CONTROLLER": 41, "INVALID_REQUEST": 42, "POLICY_VIOLATION": 44,
    "STORAGE_ERROR": 56, "SASL_AUTHENTICATION_FAILED": 58, "TOPIC_DELETION_DISABLED": 73,
    "FENCED_LEADER_EPOCH": 74, "UNKNOWN_LEADER_EPOCH": 75, "INVALID_RECORD": 87,
    "THROTTLING_QUOTA_EXCEEDED": 89,
}  # fmt: skip

# The retriable flags the brief fixes (BROKER_NOT_AVAILABLE is retriable in tidelog, unlike Kafka).
MUST_BE_RETRIABLE = {
    "CORRUPT_MESSAGE", "UNKNOWN_TOPIC_OR_PARTITION", "LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER",
    "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "NOT_CONTROLLER",
    "STORAGE_ERROR", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "BROKER_NOT_AVAILABLE",
    "THROTTLING_QUOTA_EXCEEDED", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "REBALANCE_IN_PROGRESS",
}  # fmt: skip
MUST_NOT_BE_RETRIABLE = {
    "NONE", "UNKNOWN_SERVER_ERROR", "OFFSET_OUT_OF_RANGE", "INVALID_FETCH_SIZE", "MESSAGE_TOO_LARGE",
    "INVALID_TOPIC_EXCEPTION", "RECORD_LIST_TOO_LARGE", "INVALID_REQUIRED_ACKS", "TOPIC_ALREADY_EXISTS",
    "INVALID_PARTITIONS", "INVALID_REPLICATION_FACTOR", "INVALID_CONFIG", "INVALID_REQUEST",
    "UNSUPPORTED_VERSION", "UNSUPPORTED_API", "INVALID_RECORD", "POLICY_VIOLATION", "TOPIC_DELETION_DISABLED",
    "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
}  # fmt: skip


# --- the wire table --------------------------------------------------------------------------


def test_numbers_are_unique():
    # An IntEnum silently turns a repeated number into an alias; aliases show up only here.
    assert len(ErrorCode.__members__) == len(list(ErrorCode))
    assert len({int(code) for code in ErrorCode}) == len(list(ErrorCode))


def test_numbers_match_kafka_where_kafka_has_the_code():
    for name, number in KAFKA_NUMBERS.items():
        assert ErrorCode[name] == number, name


def test_tidelog_only_codes_live_above_kafkas_range():
    assert ErrorCode.UNSUPPORTED_API >= TIDELOG_CODES_START
    assert all(code < TIDELOG_CODES_START for code in ErrorCode if code.name in KAFKA_NUMBERS)


def test_every_code_has_a_message_and_a_retriable_flag():
    for code in ErrorCode:
        assert isinstance(code.retriable, bool), code.name
        assert code.message and code.message[0].isupper() and code.message.endswith("."), code.name


def test_retriable_flags():
    for name in MUST_BE_RETRIABLE:
        assert ErrorCode[name].retriable, name
    for name in MUST_NOT_BE_RETRIABLE:
        assert not ErrorCode[name].retriable, name


def test_lookup_returns_none_for_unknown_numbers():
    assert ErrorCode.lookup(6) is ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert ErrorCode.lookup(31337) is None


def test_protocol_errors_carry_their_wire_codes():
    expected = {
        wire.FrameError: ErrorCode.INVALID_REQUEST,
        wire.FrameTooLargeError: ErrorCode.MESSAGE_TOO_LARGE,
        wire.InvalidRequestError: ErrorCode.INVALID_REQUEST,
        wire.InvalidResponseError: ErrorCode.INVALID_REQUEST,
        wire.UnsupportedApiError: ErrorCode.UNSUPPORTED_API,
        wire.UnsupportedVersionError: ErrorCode.UNSUPPORTED_VERSION,
        wire.InvalidTopicNameError: ErrorCode.INVALID_TOPIC_EXCEPTION,
    }
    for cls, code in expected.items():
        assert issubclass(cls, wire.ProtocolError)
        error = cls("why")
        assert error.error_code is code and str(error) == "why"
    assert wire.RequestRejectedError("x", ErrorCode.NOT_CONTROLLER).error_code is ErrorCode.NOT_CONTROLLER


# --- SDK exceptions -----------------------------------------------------------------------------


def _expected_class_name(code: ErrorCode) -> str:
    words = code.name.removesuffix("_EXCEPTION").split("_")
    name = "".join(word.capitalize() for word in words)
    return name if name.endswith("Error") else name + "Error"


def test_every_wire_code_but_none_has_exactly_one_class_named_after_it():
    for code in ErrorCode:
        cls = class_for_code(code)
        if code is ErrorCode.NONE:
            assert cls is None
            continue
        assert cls is not None, code.name
        assert cls.__name__ == _expected_class_name(code)
        assert getattr(errors, cls.__name__) is cls
        assert cls.ERROR_CODE is code


def test_retriable_classes_subclass_retriable_error_exactly_when_the_code_is_retriable():
    for code in ErrorCode:
        cls = class_for_code(code)
        if cls is not None:
            assert issubclass(cls, RetriableError) == code.retriable, code.name
            assert cls.RETRIABLE == code.retriable


def test_error_for_code_builds_the_right_class_with_what_and_where():
    error = error_for_code(ErrorCode.NOT_LEADER_OR_FOLLOWER, topic="orders", partition=3, broker="2@h:9292")
    assert type(error) is NotLeaderOrFollowerError
    assert error.error_code == 6 and error.retriable
    assert (error.topic, error.partition, error.broker) == ("orders", 3, "2@h:9292")
    assert str(error) == (
        "NOT_LEADER_OR_FOLLOWER: This broker is not the leader (or not a replica) of the partition "
        "(topic 'orders', partition 3, broker 2@h:9292)."
    )


def test_error_for_code_takes_the_brokers_message_and_free_text_where():
    error = error_for_code(3, "topic 'x' does not exist", where="fetching")
    assert isinstance(error, UnknownTopicOrPartitionError)
    assert error.message == "topic 'x' does not exist (fetching)."


def test_error_for_code_keeps_unknown_numbers():
    error = error_for_code(31337)
    assert type(error) is TidelogError
    assert error.error_code == 31337 and not error.retriable
    assert str(error).startswith("error code 31337: unknown error code")


def test_error_for_code_refuses_none():
    with pytest.raises(ValueError, match="success"):
        error_for_code(ErrorCode.NONE)


def test_every_code_maps_through_error_for_code():
    for code in ErrorCode:
        if code is not ErrorCode.NONE:
            error = error_for_code(int(code))
            assert error.error_code == code and error.retriable == code.retriable
            assert str(error).startswith(code.name + ": ")


# --- client-side exceptions ------------------------------------------------------------------------


def test_broker_unreachable_says_where_and_why_and_is_retriable():
    error = BrokerUnreachableError("10.0.0.7", 9292, "Connection refused")
    assert str(error) == "cannot reach broker 10.0.0.7:9292: Connection refused"
    assert error.retriable and isinstance(error, RetriableError)
    assert (error.host, error.port) == ("10.0.0.7", 9292)


def test_connection_closed_says_which_broker_and_how_many_requests_were_lost():
    error = ConnectionClosedError("2@h:9392", in_flight_requests=3)
    assert str(error) == "connection to broker 2@h:9392 closed by peer with 3 requests in flight"
    assert error.retriable


def test_timeout_says_what_timed_out_and_after_how_long():
    error = TidelogTimeoutError("metadata for topic 'orders'", 60000)
    assert str(error) == "metadata for topic 'orders' did not complete within 60000 ms"
    assert error.error_code == ErrorCode.REQUEST_TIMED_OUT and not error.retriable


def test_record_too_large_is_a_message_too_large_caught_before_sending():
    error = RecordTooLargeError(2_000_000, 1_048_576)
    assert isinstance(error, MessageTooLargeError) and not error.retriable
    assert re.fullmatch(r"record of 2000000 bytes exceeds batch_bytes_max \(1048576 bytes\)", str(error))


def test_illegal_state_has_no_wire_code():
    error = IllegalStateError("send() after stop()")
    assert error.error_code is None and not error.retriable and str(error) == "send() after stop()"
