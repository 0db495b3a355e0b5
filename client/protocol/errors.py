"""The one table of wire error codes, and the exceptions the sans-I/O codec raises.

Numbers are Kafka's wherever Kafka has the same error, so people who know Kafka can read
tidelog logs and metrics at a glance. Errors tidelog has and Kafka lacks take numbers
from TIDELOG_CODES_START up, far from Kafka's range so the two never collide.

Each code says whether it is retriable: a client that gets a retriable code may send the
same request again (usually after refreshing metadata) and expect it to succeed; any other
code is final for that request and is raised to the user.
"""

from __future__ import annotations

import enum

# First number of the codes that exist only in tidelog.
TIDELOG_CODES_START = 1000


class ErrorCode(enum.IntEnum):
    """A wire error code: the int on the wire, plus `retriable` and a default `message`."""

    retriable: bool
    message: str

    def __new__(cls, number: int, retriable: bool, message: str) -> ErrorCode:
        member = int.__new__(cls, number)
        member._value_ = number
        member.retriable = retriable
        member.message = message
        return member

    @classmethod
    def lookup(cls, number: int) -> ErrorCode | None:
        """The code with this number, or None if this version of tidelog does not know it."""
        return cls._value2member_map_.get(number)  # type: ignore[return-value]

    # name = (number, retriable, default message)
    UNKNOWN_SERVER_ERROR = (-1, False, "The server hit an unexpected error while handling the request.")
    NONE = (0, False, "No error.")
    OFFSET_OUT_OF_RANGE = (1, False, "The offset is outside the range the partition holds.")
    CORRUPT_MESSAGE = (2, True, "A record batch failed its CRC check or is otherwise malformed.")
    UNKNOWN_TOPIC_OR_PARTITION = (3, True, "This broker does not host this topic or partition.")
    INVALID_FETCH_SIZE = (4, False, "The fetch size is invalid.")
    LEADER_NOT_AVAILABLE = (5, True, "The partition has no leader right now; an election is under way.")
    NOT_LEADER_OR_FOLLOWER = (6, True, "This broker is not the leader (or not a replica) of the partition.")
    REQUEST_TIMED_OUT = (7, True, "The request timed out on the broker.")
    BROKER_NOT_AVAILABLE = (8, True, "The broker is not available.")
    REPLICA_NOT_AVAILABLE = (9, True, "The replica is not available for this partition.")
    MESSAGE_TOO_LARGE = (10, False, "The request holds a batch or frame larger than the broker accepts.")
    STALE_CONTROLLER_EPOCH = (11, False, "The request came from a controller that has been replaced.")
    OFFSET_METADATA_TOO_LARGE = (12, False, "The metadata of an offset commit is larger than the broker accepts.")
    NETWORK_EXCEPTION = (13, True, "The connection closed before a response arrived.")
    COORDINATOR_LOAD_IN_PROGRESS = (14, True, "The group coordinator is still loading its state.")
    COORDINATOR_NOT_AVAILABLE = (15, True, "The group coordinator is not available.")
    NOT_COORDINATOR = (16, True, "This broker is not the coordinator of the group.")
    INVALID_TOPIC_EXCEPTION = (17, False, "The topic name is invalid or the topic is internal.")
    RECORD_LIST_TOO_LARGE = (18, False, "The batch is larger than the segment size of the topic.")
    NOT_ENOUGH_REPLICAS = (19, True, "Fewer in-sync replicas than min.insync.replicas; nothing was written.")
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = (
        20,
        True,
        "The batch was written but fewer in-sync replicas than min.insync.replicas acknowledged it.",
    )
    INVALID_REQUIRED_ACKS = (21, False, "The acks value must be 0, 1 or -1 (all).")
    ILLEGAL_GENERATION = (22, False, "The group generation in the request is not the current one.")
    INCONSISTENT_GROUP_PROTOCOL = (23, False, "The member's protocols do not match the group's.")
    INVALID_GROUP_ID = (24, False, "The group id is invalid.")
    UNKNOWN_MEMBER_ID = (25, False, "The group coordinator does not know this member id.")
    INVALID_SESSION_TIMEOUT = (26, False, "The session timeout is outside the range the broker allows.")
    REBALANCE_IN_PROGRESS = (27, True, "The group is rebalancing; rejoin it.")
    INVALID_COMMIT_OFFSET_SIZE = (28, False, "The offset commit metadata is too large.")
    TOPIC_AUTHORIZATION_FAILED = (29, False, "Not authorized to access the topic.")
    GROUP_AUTHORIZATION_FAILED = (30, False, "Not authorized to access the group.")
    CLUSTER_AUTHORIZATION_FAILED = (31, False, "Not authorized for this cluster operation.")
    INVALID_TIMESTAMP = (32, False, "A record timestamp is outside the accepted range.")
    UNSUPPORTED_SASL_MECHANISM = (33, False, "The broker does not support this SASL mechanism.")
    ILLEGAL_SASL_STATE = (34, False, "The request is not valid in the current SASL state.")
    UNSUPPORTED_VERSION = (35, False, "The broker does not support this version of the API.")
    TOPIC_ALREADY_EXISTS = (36, False, "The topic already exists.")
    INVALID_PARTITIONS = (37, False, "The number of partitions is invalid.")
    INVALID_REPLICATION_FACTOR = (38, False, "The replication factor is invalid or exceeds the live brokers.")
    INVALID_REPLICA_ASSIGNMENT = (39, False, "The replica assignment is invalid.")
    INVALID_CONFIG = (40, False, "A configuration entry is unknown or has an invalid value.")
    NOT_CONTROLLER = (41, True, "This broker is not the active controller.")
    INVALID_REQUEST = (42, False, "The request is malformed; this is a client or server bug.")
    POLICY_VIOLATION = (44, False, "The request breaks a policy configured on the broker.")
    OUT_OF_ORDER_SEQUENCE_NUMBER = (45, False, "The broker got a producer sequence number out of order.")
    DUPLICATE_SEQUENCE_NUMBER = (46, False, "The broker got a duplicate producer sequence number.")
    INVALID_PRODUCER_EPOCH = (47, False, "The producer epoch is older than the current one.")
    INVALID_TXN_STATE = (48, False, "The transaction is in a state that does not allow this operation.")
    INVALID_PRODUCER_ID_MAPPING = (49, False, "The producer id does not belong to this transactional id.")
    INVALID_TRANSACTION_TIMEOUT = (50, False, "The transaction timeout is above the broker's transaction_max_timeout_ms.")
    CONCURRENT_TRANSACTIONS = (51, True, "Another transaction operation for this producer is in progress.")
    TRANSACTION_COORDINATOR_FENCED = (52, False, "A newer transaction coordinator took over; this one's markers are refused.")
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = (53, False, "Not authorized for this transactional id.")
    STORAGE_ERROR = (56, True, "The broker's log directory failed; the partition may move to another broker.")
    SASL_AUTHENTICATION_FAILED = (58, False, "SASL authentication failed.")
    UNKNOWN_PRODUCER_ID = (59, False, "The broker has no state for this producer id.")
    NON_EMPTY_GROUP = (68, False, "The group still has members.")
    GROUP_ID_NOT_FOUND = (69, False, "The group does not exist.")
    TOPIC_DELETION_DISABLED = (73, False, "Topic deletion is disabled on this cluster.")
    FENCED_LEADER_EPOCH = (74, True, "The request's leader epoch is older than the broker's.")
    UNKNOWN_LEADER_EPOCH = (75, True, "The request's leader epoch is newer than the broker's.")
    UNSUPPORTED_COMPRESSION_TYPE = (76, False, "The broker does not support this compression codec.")
    STALE_BROKER_EPOCH = (77, False, "The broker epoch is older than the controller's record of it.")
    OFFSET_NOT_AVAILABLE = (78, True, "The leader cannot answer this offset query yet.")
    MEMBER_ID_REQUIRED = (79, False, "The member must rejoin with the member id the coordinator gave it.")
    GROUP_MAX_SIZE_REACHED = (81, False, "The group has reached its maximum number of members.")
    FENCED_INSTANCE_ID = (82, False, "Another consumer with the same group_instance_id replaced this member.")
    INVALID_RECORD = (87, False, "A record failed the broker's validation and was rejected.")
    UNSTABLE_OFFSET_COMMIT = (88, True, "There are pending transactional offsets for this partition.")
    THROTTLING_QUOTA_EXCEEDED = (89, True, "The request exceeds a throttling quota; retry later.")
    PRODUCER_FENCED = (90, False, "A newer producer with the same transactional id fenced this one.")
    INVALID_UPDATE_VERSION = (95, False, "The partition changed since the version this update was made from.")
    INCONSISTENT_VOTER_SET = (94, False, "The sender or receiver is not one of the expected Raft voters.")
    BROKER_ID_NOT_REGISTERED = (102, False, "The broker id is not registered with the controller.")
    INELIGIBLE_REPLICA = (107, False, "A replica named for the ISR is not eligible (fenced or not a replica).")
    INCONSISTENT_CLUSTER_ID = (104, False, "The cluster id in the request does not match this cluster's.")
    RESOURCE_NOT_FOUND = (91, False, "The named resource (a user, an ACL) does not exist.")
    UNACCEPTABLE_CREDENTIAL = (93, False, "The credential does not meet the broker's rules (mechanism, iterations, lengths).")
    UNSUPPORTED_API = (TIDELOG_CODES_START, False, "The broker does not know this API key.")


class ProtocolError(Exception):
    """A frame or message the sans-I/O codec cannot accept (or build).

    `error_code` is the wire code a broker answers with (or the SDK maps to an exception);
    subclasses pick a default, callers may pass a more precise one.
    """

    default_error_code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, error_code: ErrorCode | None = None):
        super().__init__(message)
        self.message = message
        self.error_code = self.default_error_code if error_code is None else error_code


class FrameError(ProtocolError):
    """The byte stream does not hold a valid frame; the connection cannot be trusted after it."""


class FrameTooLargeError(FrameError):
    """A frame's length prefix (or an encoded frame) exceeds the configured maximum."""

    default_error_code = ErrorCode.MESSAGE_TOO_LARGE


class FrameLengthError(FrameError):
    """A length prefix is too short to hold the fixed header, or negative as a signed int."""


class ControlLengthError(FrameError):
    """control_length is zero or runs past the end of the frame."""


class ControlDecodeError(FrameError):
    """The control part is not exactly one valid msgpack object."""


class ControlEncodeError(FrameError):
    """A control object cannot be packed as msgpack (a caller bug, raised on encode)."""


class DecoderFailedError(FrameError):
    """The decoder already raised a FrameError; the stream has lost its frame boundaries."""


class MalformedMessageError(ProtocolError):
    """A frame decoded but its control part does not have the shape of the message."""


class InvalidRequestError(MalformedMessageError):
    """A request's control part has wrong types or shapes (answered with INVALID_REQUEST)."""


class InvalidResponseError(MalformedMessageError):
    """A response's control part has wrong types or shapes."""


class UnsupportedApiError(ProtocolError):
    """The api_key is unknown, or reserved but not implemented yet."""

    default_error_code = ErrorCode.UNSUPPORTED_API


class UnsupportedVersionError(ProtocolError):
    """The api_version is outside the range this side supports for the api_key."""

    default_error_code = ErrorCode.UNSUPPORTED_VERSION


class RequestRejectedError(ProtocolError):
    """The broker answered with an error response instead of the response type expected.

    A broker sends one when it cannot decode a request at all (bad shape, unsupported API or
    version); `error_code` and the message come from the broker.
    """


class InvalidTopicNameError(ProtocolError):
    """A topic name breaks the naming rules of client.protocol.limits."""

    default_error_code = ErrorCode.INVALID_TOPIC_EXCEPTION
