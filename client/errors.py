"""Exceptions of the tidelog SDK: one class per wire error code, plus client-side errors.

Every exception carries `error_code` (the wire code, or None for purely local errors),
`retriable` (the SDK retries those itself within its timeouts) and `message`. Retriable
wire errors also subclass RetriableError, so `except RetriableError` catches exactly them.

Each wire class is declared with `code=ErrorCode.X`; a test checks that every code in
client.protocol.errors.ErrorCode has exactly one class, named after it.
"""

from __future__ import annotations

from typing import ClassVar

from client.protocol.errors import ErrorCode

_CLASS_BY_CODE: dict[int, type[TidelogError]] = {}


class TidelogError(Exception):
    """Base of every SDK exception."""

    ERROR_CODE: ClassVar[ErrorCode | None] = None
    RETRIABLE: ClassVar[bool] = False
    # str() starts with the code's name for errors that came from a broker; client-side errors
    # read better without it ("cannot reach broker ...").
    SHOW_CODE_NAME: ClassVar[bool] = True
    # Where the error happened, when known (set by error_for_code).
    topic: str | None = None
    partition: int | None = None
    broker: object | None = None

    def __init_subclass__(cls, code: ErrorCode | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is None:
            return
        if code in _CLASS_BY_CODE:
            raise TypeError(f"{code.name} already has {_CLASS_BY_CODE[code].__name__}")
        cls.ERROR_CODE = code
        cls.RETRIABLE = code.retriable
        _CLASS_BY_CODE[code] = cls

    def __init__(
        self,
        message: str | None = None,
        *,
        error_code: int | None = None,
        retriable: bool | None = None,
    ):
        self.error_code: int | None = self.ERROR_CODE if error_code is None else error_code
        self.retriable: bool = self.RETRIABLE if retriable is None else retriable
        if message is None:
            message = self.ERROR_CODE.message if self.ERROR_CODE is not None else type(self).__name__
        self.message: str = message
        super().__init__(message)

    def __str__(self) -> str:
        if self.error_code is None or not self.SHOW_CODE_NAME:
            return self.message
        known = ErrorCode.lookup(self.error_code)
        name = known.name if known is not None else f"error code {self.error_code}"
        return f"{name}: {self.message}"


class RetriableError(TidelogError):
    """Base of the errors a request may succeed after (often once metadata is refreshed)."""

    RETRIABLE = True


# --- one class per wire error code (ErrorCode.NONE has none) ---------------------------------
# fmt: off
class UnknownServerError(TidelogError, code=ErrorCode.UNKNOWN_SERVER_ERROR): ...
class OffsetOutOfRangeError(TidelogError, code=ErrorCode.OFFSET_OUT_OF_RANGE): ...
class CorruptMessageError(RetriableError, code=ErrorCode.CORRUPT_MESSAGE): ...
class UnknownTopicOrPartitionError(RetriableError, code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION): ...
class InvalidFetchSizeError(TidelogError, code=ErrorCode.INVALID_FETCH_SIZE): ...
class LeaderNotAvailableError(RetriableError, code=ErrorCode.LEADER_NOT_AVAILABLE): ...
class NotLeaderOrFollowerError(RetriableError, code=ErrorCode.NOT_LEADER_OR_FOLLOWER): ...
class RequestTimedOutError(RetriableError, code=ErrorCode.REQUEST_TIMED_OUT): ...
class BrokerNotAvailableError(RetriableError, code=ErrorCode.BROKER_NOT_AVAILABLE): ...
class ReplicaNotAvailableError(RetriableError, code=ErrorCode.REPLICA_NOT_AVAILABLE): ...
class MessageTooLargeError(TidelogError, code=ErrorCode.MESSAGE_TOO_LARGE): ...
class StaleControllerEpochError(TidelogError, code=ErrorCode.STALE_CONTROLLER_EPOCH): ...
class OffsetMetadataTooLargeError(TidelogError, code=ErrorCode.OFFSET_METADATA_TOO_LARGE): ...
class NetworkError(RetriableError, code=ErrorCode.NETWORK_EXCEPTION): ...
class CoordinatorLoadInProgressError(RetriableError, code=ErrorCode.COORDINATOR_LOAD_IN_PROGRESS): ...
class CoordinatorNotAvailableError(RetriableError, code=ErrorCode.COORDINATOR_NOT_AVAILABLE): ...
class NotCoordinatorError(RetriableError, code=ErrorCode.NOT_COORDINATOR): ...
class InvalidTopicError(TidelogError, code=ErrorCode.INVALID_TOPIC_EXCEPTION): ...
class RecordListTooLargeError(TidelogError, code=ErrorCode.RECORD_LIST_TOO_LARGE): ...
class NotEnoughReplicasError(RetriableError, code=ErrorCode.NOT_ENOUGH_REPLICAS): ...
class NotEnoughReplicasAfterAppendError(RetriableError, code=ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND): ...
class InvalidRequiredAcksError(TidelogError, code=ErrorCode.INVALID_REQUIRED_ACKS): ...
class IllegalGenerationError(TidelogError, code=ErrorCode.ILLEGAL_GENERATION): ...
class InconsistentGroupProtocolError(TidelogError, code=ErrorCode.INCONSISTENT_GROUP_PROTOCOL): ...
class InvalidGroupIdError(TidelogError, code=ErrorCode.INVALID_GROUP_ID): ...
class UnknownMemberIdError(TidelogError, code=ErrorCode.UNKNOWN_MEMBER_ID): ...
class InvalidSessionTimeoutError(TidelogError, code=ErrorCode.INVALID_SESSION_TIMEOUT): ...
class RebalanceInProgressError(RetriableError, code=ErrorCode.REBALANCE_IN_PROGRESS): ...
class InvalidCommitOffsetSizeError(TidelogError, code=ErrorCode.INVALID_COMMIT_OFFSET_SIZE): ...
class TopicAuthorizationFailedError(TidelogError, code=ErrorCode.TOPIC_AUTHORIZATION_FAILED): ...
class GroupAuthorizationFailedError(TidelogError, code=ErrorCode.GROUP_AUTHORIZATION_FAILED): ...
class ClusterAuthorizationFailedError(TidelogError, code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED): ...
class InvalidTimestampError(TidelogError, code=ErrorCode.INVALID_TIMESTAMP): ...
class UnsupportedSaslMechanismError(TidelogError, code=ErrorCode.UNSUPPORTED_SASL_MECHANISM): ...
class IllegalSaslStateError(TidelogError, code=ErrorCode.ILLEGAL_SASL_STATE): ...
class UnsupportedVersionError(TidelogError, code=ErrorCode.UNSUPPORTED_VERSION): ...
class TopicAlreadyExistsError(TidelogError, code=ErrorCode.TOPIC_ALREADY_EXISTS): ...
class InvalidPartitionsError(TidelogError, code=ErrorCode.INVALID_PARTITIONS): ...
class InvalidReplicationFactorError(TidelogError, code=ErrorCode.INVALID_REPLICATION_FACTOR): ...
class InvalidReplicaAssignmentError(TidelogError, code=ErrorCode.INVALID_REPLICA_ASSIGNMENT): ...
class InvalidConfigError(TidelogError, code=ErrorCode.INVALID_CONFIG): ...
class NotControllerError(RetriableError, code=ErrorCode.NOT_CONTROLLER): ...
class InvalidRequestError(TidelogError, code=ErrorCode.INVALID_REQUEST): ...
class PolicyViolationError(TidelogError, code=ErrorCode.POLICY_VIOLATION): ...
class OutOfOrderSequenceNumberError(TidelogError, code=ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER): ...
class DuplicateSequenceNumberError(TidelogError, code=ErrorCode.DUPLICATE_SEQUENCE_NUMBER): ...
class InvalidProducerEpochError(TidelogError, code=ErrorCode.INVALID_PRODUCER_EPOCH): ...
class InvalidTxnStateError(TidelogError, code=ErrorCode.INVALID_TXN_STATE): ...
class InvalidProducerIdMappingError(TidelogError, code=ErrorCode.INVALID_PRODUCER_ID_MAPPING): ...
class ConcurrentTransactionsError(RetriableError, code=ErrorCode.CONCURRENT_TRANSACTIONS): ...
class TransactionalIdAuthorizationFailedError(TidelogError, code=ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED): ...  # noqa: E501
class StorageError(RetriableError, code=ErrorCode.STORAGE_ERROR): ...
class SaslAuthenticationFailedError(TidelogError, code=ErrorCode.SASL_AUTHENTICATION_FAILED): ...
class UnknownProducerIdError(TidelogError, code=ErrorCode.UNKNOWN_PRODUCER_ID): ...
class NonEmptyGroupError(TidelogError, code=ErrorCode.NON_EMPTY_GROUP): ...
class GroupIdNotFoundError(TidelogError, code=ErrorCode.GROUP_ID_NOT_FOUND): ...
class TopicDeletionDisabledError(TidelogError, code=ErrorCode.TOPIC_DELETION_DISABLED): ...
class FencedLeaderEpochError(RetriableError, code=ErrorCode.FENCED_LEADER_EPOCH): ...
class UnknownLeaderEpochError(RetriableError, code=ErrorCode.UNKNOWN_LEADER_EPOCH): ...
class UnsupportedCompressionTypeError(TidelogError, code=ErrorCode.UNSUPPORTED_COMPRESSION_TYPE): ...
class StaleBrokerEpochError(TidelogError, code=ErrorCode.STALE_BROKER_EPOCH): ...
class OffsetNotAvailableError(RetriableError, code=ErrorCode.OFFSET_NOT_AVAILABLE): ...
class MemberIdRequiredError(TidelogError, code=ErrorCode.MEMBER_ID_REQUIRED): ...
class GroupMaxSizeReachedError(TidelogError, code=ErrorCode.GROUP_MAX_SIZE_REACHED): ...
class FencedInstanceIdError(TidelogError, code=ErrorCode.FENCED_INSTANCE_ID): ...
class InvalidRecordError(TidelogError, code=ErrorCode.INVALID_RECORD): ...
class UnstableOffsetCommitError(RetriableError, code=ErrorCode.UNSTABLE_OFFSET_COMMIT): ...
class ThrottlingQuotaExceededError(RetriableError, code=ErrorCode.THROTTLING_QUOTA_EXCEEDED): ...
class ProducerFencedError(TidelogError, code=ErrorCode.PRODUCER_FENCED): ...
class InconsistentVoterSetError(TidelogError, code=ErrorCode.INCONSISTENT_VOTER_SET): ...
class InvalidUpdateVersionError(TidelogError, code=ErrorCode.INVALID_UPDATE_VERSION): ...
class IneligibleReplicaError(TidelogError, code=ErrorCode.INELIGIBLE_REPLICA): ...
class BrokerIdNotRegisteredError(TidelogError, code=ErrorCode.BROKER_ID_NOT_REGISTERED): ...
class InconsistentClusterIdError(TidelogError, code=ErrorCode.INCONSISTENT_CLUSTER_ID): ...
class ResourceNotFoundError(TidelogError, code=ErrorCode.RESOURCE_NOT_FOUND): ...
class UnacceptableCredentialError(TidelogError, code=ErrorCode.UNACCEPTABLE_CREDENTIAL): ...
class UnsupportedApiError(TidelogError, code=ErrorCode.UNSUPPORTED_API): ...
# fmt: on


# --- client-side errors ----------------------------------------------------------------------


class BrokerUnreachableError(NetworkError):
    """No connection to a broker could be made (refused, DNS, TLS, connect timeout)."""

    SHOW_CODE_NAME = False

    def __init__(self, host: str, port: int, reason: str):
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot reach broker {host}:{port}: {reason}")


class ConnectionClosedError(NetworkError):
    """An open connection closed (or broke) while requests were in flight."""

    SHOW_CODE_NAME = False

    def __init__(self, broker: str, reason: str = "closed by peer", in_flight_requests: int = 0):
        self.broker = broker
        self.in_flight_requests = in_flight_requests
        pending = f" with {in_flight_requests} requests in flight" if in_flight_requests else ""
        super().__init__(f"connection to broker {broker} {reason}{pending}")


class TidelogTimeoutError(TidelogError):
    """A client-side deadline passed (request, delivery, metadata wait). Not retriable:
    the time budget the caller gave is spent."""

    SHOW_CODE_NAME = False

    def __init__(self, what: str, timeout_ms: float):
        self.what = what
        self.timeout_ms = timeout_ms
        super().__init__(
            f"{what} did not complete within {timeout_ms:g} ms",
            error_code=ErrorCode.REQUEST_TIMED_OUT,
            retriable=False,
        )


class RecordTooLargeError(MessageTooLargeError):
    """A record or batch is larger than the client's limit; caught before anything is sent."""

    SHOW_CODE_NAME = False

    def __init__(self, size_bytes: int, limit_bytes: int, limit_name: str = "batch_bytes_max"):
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        super().__init__(f"record of {size_bytes} bytes exceeds {limit_name} ({limit_bytes} bytes)")


class IllegalStateError(TidelogError):
    """The SDK object is used in a state that does not allow the call (e.g. send after stop)."""


def _location(topic: str | None, partition: int | None, broker: object | None) -> str:
    parts = []
    if topic is not None:
        parts.append(f"topic {topic!r}")
    if partition is not None:
        parts.append(f"partition {partition}")
    if broker is not None:
        parts.append(f"broker {broker}")
    return ", ".join(parts)


def error_for_code(
    code: int,
    message: str | None = None,
    where: str | None = None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    broker: object | None = None,
) -> TidelogError:
    """The exception for a wire error code, its message saying what failed and where.

    `message` defaults to the code's own; `where` is free text ("producing to orders-3"),
    and topic/partition/broker (node id or host:port) are added to the message and kept as
    attributes. An unknown code gives a plain TidelogError that keeps the number.
    """
    known = ErrorCode.lookup(code)
    if known is ErrorCode.NONE:
        raise ValueError("error_for_code(NONE): code 0 means success, not an error")
    text = message or (known.message if known is not None else "unknown error code from the broker")
    location = _location(topic, partition, broker)
    if topic is not None and partition is None and f"'{topic}'" in text:
        location = _location(None, None, broker)  # the broker's message already names the topic
    context = ", ".join(part for part in (where, location) if part)
    if context:
        text = f"{text.rstrip('.')} ({context})."
    if known is None:
        error = TidelogError(text, error_code=code, retriable=False)
    else:
        error = _CLASS_BY_CODE[known](text)
    error.topic, error.partition, error.broker = topic, partition, broker
    return error


def class_for_code(code: int) -> type[TidelogError] | None:
    """The exception class of a known wire code (None for NONE and unknown numbers)."""
    return _CLASS_BY_CODE.get(code)
