"""Typed requests and responses, one pair per API, and the registry that maps API keys to them.

Each message is a small dataclass with `to_control()` (plain lists for msgpack: positional
fields keep the hot Produce and Fetch control parts compact), `payload_parts()` (raw record
bytes, sent after the control part and never copied), and `from_control(control, payload)`.
Decoding checks shapes and integer widths and raises InvalidRequestError / InvalidResponseError
with the path of the bad field; it never lets KeyError, TypeError or IndexError escape. Rules
that have their own error code (acks values, topic names, partition counts) are the broker's to
check, so it can answer per topic or partition.

API keys: Kafka's number wherever Kafka has an API with the same purpose; APIs that exist only
in tidelog take numbers from TIDELOG_API_KEYS_START (1000) up. Keys listed in ApiKey without a
registered message class are reserved for work not done yet.

To add an API: write the request and response dataclasses (subclasses of Request and Response
with API_KEY set and `_from_control` / `to_control` written), then call `register_api`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

from client.protocol.errors import (
    ErrorCode,
    InvalidRequestError,
    InvalidResponseError,
    ProtocolError,
    RequestRejectedError,
    UnsupportedApiError,
    UnsupportedVersionError,
)
from client.protocol.frames import (
    RequestFrame,
    ResponseFrame,
    encode_request,
    encode_response,
    payload_part_bytes,
)
from client.protocol.limits import (
    FETCH_BYTES_MAX_DEFAULT,
    FETCH_MAX_WAIT_MS_DEFAULT,
    FETCH_MIN_BYTES_DEFAULT,
    FETCH_PARTITION_BYTES_MAX_DEFAULT,
    FRAME_BYTES_MAX_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
)

TIDELOG_API_KEYS_START = 1000


class ApiKey(enum.IntEnum):
    """Every API key, implemented or reserved. Numbers below 1000 are Kafka's for the same API."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    CONTROLLED_SHUTDOWN = 7  # a stopping broker asks the controller to move its leaderships first
    METADATA = 3
    OFFSET_COMMIT = 8  # reserved
    OFFSET_FETCH = 9  # reserved
    FIND_COORDINATOR = 10  # reserved
    JOIN_GROUP = 11  # reserved
    HEARTBEAT = 12  # reserved
    LEAVE_GROUP = 13  # reserved
    SYNC_GROUP = 14  # reserved
    DESCRIBE_GROUPS = 15  # reserved
    LIST_GROUPS = 16  # reserved
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    INIT_PRODUCER_ID = 22  # a producer id (and epoch) for an idempotent or transactional producer
    OFFSETS_FOR_LEADER_EPOCH = 23  # a follower asks where its last leader epoch ended (KIP-101)
    ADD_PARTITIONS_TO_TXN = 24  # transactions: a partition joins the producer's transaction
    ADD_OFFSETS_TO_TXN = 25  # transactions: the transaction will commit a group's offsets
    END_TXN = 26  # transactions: commit or abort (two-phase, run by the coordinator)
    WRITE_TXN_MARKERS = 27  # transactions: coordinator -> partition leader, commit/abort markers
    TXN_OFFSET_COMMIT = 28  # transactions: a group's offsets, committed only with the transaction
    ALTER_TOPIC_CONFIGS = 44  # Kafka's IncrementalAlterConfigs, for topics
    RAFT_VOTE = 52  # reserved; Kafka's KRaft Vote
    DESCRIBE_QUORUM = 55  # Kafka's KRaft DescribeQuorum: the controller quorum's leader, term, lag
    ALTER_PARTITION = 56  # a partition leader asks the controller to change the ISR
    DESCRIBE_CLUSTER = 60
    BROKER_REGISTRATION = 62  # reserved
    BROKER_HEARTBEAT = 63  # reserved
    DESCRIBE_TRANSACTIONS = 65  # reserved (Kafka's DescribeTransactions: not built yet)
    DESCRIBE_TOPIC = TIDELOG_API_KEYS_START  # partitions and configs of named topics
    RAFT_APPEND_ENTRIES = TIDELOG_API_KEYS_START + 1  # reserved; Kafka's KRaft replicates via Fetch
    RAFT_INSTALL_SNAPSHOT = TIDELOG_API_KEYS_START + 2  # reserved


# Sentinel values that mean something on the wire.
CONSUMER_REPLICA_ID = -1  # replica_id of a Fetch/ListOffsets sent by a consumer, not a follower
NO_NODE_ID = -1  # leader_id / controller_id when there is none
NO_LEADER_EPOCH = -1  # current_leader_epoch when the client does not know it
NO_OFFSET = -1  # base_offset / log_start_offset / offset when there is none (e.g. acks=0, errors)
NO_TIMESTAMP = -1  # log_append_time_ms when the topic uses create time
LATEST_TIMESTAMP = -1  # ListOffsets: the log end offset
EARLIEST_TIMESTAMP = -2  # ListOffsets: the log start offset
READ_UNCOMMITTED = 0
READ_COMMITTED = 1
ACKS_NONE, ACKS_LEADER, ACKS_ALL = 0, 1, -1

_I8 = (-(2**7), 2**7 - 1)
_I16 = (-(2**15), 2**15 - 1)
_I32 = (-(2**31), 2**31 - 1)
_I64 = (-(2**63), 2**63 - 1)
_U16 = (0, 2**16 - 1)
_U32 = (0, 2**32 - 1)
_ISOLATION_LEVELS = (READ_UNCOMMITTED, READ_COMMITTED)


# --- shape checks ---------------------------------------------------------------------------
# Paths name fields as "topics[].partitions[].partition"; building index-exact paths on the hot
# path would cost a string per field of every partition, and the field name is what a reader needs.


class _Malformed(Exception):
    """Internal: a field has the wrong type or shape. from_control turns it into the public error."""


def _describe(value: Any) -> str:
    """Short, safe description of a bad value: never a giant or deeply nested repr."""
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        return f"dict of {len(value)} entries"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _int(value: Any, path: str, bounds: tuple[int, int]) -> int:
    if type(value) is not int or not bounds[0] <= value <= bounds[1]:
        raise _Malformed(f"{path} must be an int in [{bounds[0]}, {bounds[1]}], got {_describe(value)}")
    return value


def _str(value: Any, path: str) -> str:
    if type(value) is not str:
        raise _Malformed(f"{path} must be a str, got {_describe(value)}")
    return value


def _opt_str(value: Any, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise _Malformed(f"{path} must be a bool, got {_describe(value)}")
    return value


def _list(value: Any, path: str) -> list | tuple:
    if type(value) is not list and type(value) is not tuple:
        raise _Malformed(f"{path} must be a list, got {_describe(value)}")
    return value


def _fields(value: Any, path: str, count: int) -> list | tuple:
    """A fixed-width row: a list of exactly `count` fields."""
    if (type(value) is not list and type(value) is not tuple) or len(value) != count:
        raise _Malformed(f"{path} must be a list of {count} fields, got {_describe(value)}")
    return value


def _rows(value: Any, path: str, count: int) -> Iterator[list | tuple]:
    """Each item of a list, checked to be a row of `count` fields."""
    row_path = path + "[]"
    for row in _list(value, path):
        yield _fields(row, row_path, count)


def _str_list(value: Any, path: str) -> list[str]:
    item_path = path + "[]"
    return [_str(item, item_path) for item in _list(value, path)]


def _int_list(value: Any, path: str, bounds: tuple[int, int]) -> list[int]:
    item_path = path + "[]"
    return [_int(item, item_path, bounds) for item in _list(value, path)]


def _str_map(value: Any, path: str) -> dict[str, str]:
    if type(value) is not dict:
        raise _Malformed(f"{path} must be a dict of str to str, got {_describe(value)}")
    for key, item in value.items():
        _str(key, f"{path} key")
        _str(item, f"{path}[{key!r:.40}]")
    return value


class _PayloadReader:
    """Hands out consecutive memoryview slices of a payload: zero-copy record bytes."""

    __slots__ = ("_view", "_position")

    def __init__(self, view: memoryview):
        self._view = view
        self._position = 0

    def take(self, length: int, path: str) -> memoryview:
        end = self._position + length
        if end > len(self._view):
            raise _Malformed(
                f"{path} is {length} bytes but only {len(self._view) - self._position} payload bytes remain"
            )
        piece = self._view[self._position : end]
        self._position = end
        return piece

    def finish(self) -> None:
        left = len(self._view) - self._position
        if left:
            raise _Malformed(f"payload has {left} trailing bytes that no control field describes")


def _as_byte_view(payload: Any) -> memoryview:
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _records_parts(records: Any) -> list[Any]:
    """A partition's record bytes as a list of pieces (one bytes-like, or a list of them)."""
    return list(records) if isinstance(records, (list, tuple)) else [records]


def _records_bytes(records: Any) -> int:
    return sum(payload_part_bytes(part) for part in _records_parts(records))


# --- message base classes -------------------------------------------------------------------


class _Message:
    __slots__ = ()
    API_KEY: ClassVar[int]
    IS_REQUEST: ClassVar[bool]

    def to_control(self) -> Any:
        """The control part: plain lists, ints, strs, bools, None and dicts for msgpack."""
        raise NotImplementedError

    def payload_parts(self) -> list[Any]:
        """Raw payload pieces in the order the control part describes them (none by default)."""
        return []

    @classmethod
    def from_control(cls, control: Any, payload: Any = b""):
        """Build the message from a decoded control part and the frame payload (zero copy)."""
        reader = _PayloadReader(_as_byte_view(payload))
        try:
            message = cls._from_control(control, reader)
            reader.finish()
        except _Malformed as exc:
            kind = "request" if cls.IS_REQUEST else "response"
            error = InvalidRequestError if cls.IS_REQUEST else InvalidResponseError
            raise error(f"{ApiKey(cls.API_KEY).name} {kind}: {exc}") from None
        return message

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader):
        raise NotImplementedError


class Request(_Message):
    __slots__ = ()
    IS_REQUEST = True


class Response(_Message):
    __slots__ = ()
    IS_REQUEST = False


# --- ApiVersions ----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class ApiVersionsRequest(Request):
    """Asks which API keys and versions the broker supports; the first request on a connection."""

    API_KEY: ClassVar[int] = ApiKey.API_VERSIONS
    client_software_name: str = "tidelog-python"
    client_software_version: str = "0"

    def to_control(self) -> list:
        return [self.client_software_name, self.client_software_version]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ApiVersionsRequest:
        name, version = _fields(control, "control", 2)
        return cls(
            client_software_name=_str(name, "client_software_name"),
            client_software_version=_str(version, "client_software_version"),
        )


@dataclass(slots=True)
class ApiVersionRange:
    api_key: int
    min_version: int
    max_version: int


@dataclass(slots=True, kw_only=True)
class ApiVersionsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.API_VERSIONS
    error_code: int = ErrorCode.NONE
    api_versions: list[ApiVersionRange] = field(default_factory=list)

    def to_control(self) -> list:
        rows = [[r.api_key, r.min_version, r.max_version] for r in self.api_versions]
        return [self.error_code, rows]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ApiVersionsResponse:
        error_code, rows = _fields(control, "control", 2)
        ranges = [
            ApiVersionRange(
                _int(key, "api_versions[].api_key", _I16),
                _int(low, "api_versions[].min_version", _I16),
                _int(high, "api_versions[].max_version", _I16),
            )
            for key, low, high in _rows(rows, "api_versions", 3)
        ]
        return cls(error_code=_int(error_code, "error_code", _I16), api_versions=ranges)


# --- Metadata, DescribeTopic, DescribeCluster -----------------------------------------------


@dataclass(slots=True, kw_only=True)
class MetadataRequest(Request):
    """Brokers and partition leaders of some topics (topics=None: all topics)."""

    API_KEY: ClassVar[int] = ApiKey.METADATA
    topics: list[str] | None = None
    allow_auto_topic_creation: bool = False

    def to_control(self) -> list:
        return [self.topics, self.allow_auto_topic_creation]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> MetadataRequest:
        topics, allow = _fields(control, "control", 2)
        return cls(
            topics=None if topics is None else _str_list(topics, "topics"),
            allow_auto_topic_creation=_bool(allow, "allow_auto_topic_creation"),
        )


@dataclass(slots=True)
class BrokerMetadata:
    node_id: int
    host: str
    port: int


@dataclass(slots=True)
class PartitionMetadata:
    error_code: int
    partition: int
    leader_id: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]

    def to_row(self) -> list:
        return [self.error_code, self.partition, self.leader_id, self.leader_epoch, self.replicas, self.isr]

    @classmethod
    def from_row(cls, row: Sequence[Any], path: str) -> PartitionMetadata:
        error_code, partition, leader_id, leader_epoch, replicas, isr = row
        return cls(
            _int(error_code, path + ".error_code", _I16),
            _int(partition, path + ".partition", _I32),
            _int(leader_id, path + ".leader_id", _I32),
            _int(leader_epoch, path + ".leader_epoch", _I32),
            _int_list(replicas, path + ".replicas", _I32),
            _int_list(isr, path + ".isr", _I32),
        )


def _partitions(value: Any, path: str) -> list[PartitionMetadata]:
    row_path = path + "[]"
    return [PartitionMetadata.from_row(row, row_path) for row in _rows(value, path, 6)]


@dataclass(slots=True)
class TopicMetadata:
    error_code: int
    name: str
    partitions: list[PartitionMetadata]


@dataclass(slots=True, kw_only=True)
class MetadataResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.METADATA
    brokers: list[BrokerMetadata] = field(default_factory=list)
    controller_id: int = NO_NODE_ID
    cluster_id: str | None = None
    topics: list[TopicMetadata] = field(default_factory=list)

    def to_control(self) -> list:
        brokers = [[b.node_id, b.host, b.port] for b in self.brokers]
        topics = [[t.error_code, t.name, [p.to_row() for p in t.partitions]] for t in self.topics]
        return [brokers, self.controller_id, self.cluster_id, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> MetadataResponse:
        brokers, controller_id, cluster_id, topics = _fields(control, "control", 4)
        return cls(
            brokers=[
                BrokerMetadata(
                    _int(node_id, "brokers[].node_id", _I32),
                    _str(host, "brokers[].host"),
                    _int(port, "brokers[].port", _U16),
                )
                for node_id, host, port in _rows(brokers, "brokers", 3)
            ],
            controller_id=_int(controller_id, "controller_id", _I32),
            cluster_id=_opt_str(cluster_id, "cluster_id"),
            topics=[
                TopicMetadata(
                    _int(error_code, "topics[].error_code", _I16),
                    _str(name, "topics[].name"),
                    _partitions(partitions, "topics[].partitions"),
                )
                for error_code, name, partitions in _rows(topics, "topics", 3)
            ],
        )


@dataclass(slots=True, kw_only=True)
class DescribeTopicRequest(Request):
    """Partitions (leader, epoch, replicas, ISR) and configs of the named topics."""

    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_TOPIC
    names: list[str] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.names]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeTopicRequest:
        (names,) = _fields(control, "control", 1)
        return cls(names=_str_list(names, "names"))


@dataclass(slots=True)
class DescribedTopic:
    error_code: int
    name: str
    partitions: list[PartitionMetadata]
    configs: dict[str, str]


@dataclass(slots=True, kw_only=True)
class DescribeTopicResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_TOPIC
    topics: list[DescribedTopic] = field(default_factory=list)

    def to_control(self) -> list:
        rows = [[t.error_code, t.name, [p.to_row() for p in t.partitions], t.configs] for t in self.topics]
        return [rows]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeTopicResponse:
        (rows,) = _fields(control, "control", 1)
        return cls(
            topics=[
                DescribedTopic(
                    _int(error_code, "topics[].error_code", _I16),
                    _str(name, "topics[].name"),
                    _partitions(partitions, "topics[].partitions"),
                    _str_map(configs, "topics[].configs"),
                )
                for error_code, name, partitions, configs in _rows(rows, "topics", 4)
            ]
        )


@dataclass(slots=True, kw_only=True)
class DescribeClusterRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_CLUSTER

    def to_control(self) -> list:
        return []

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeClusterRequest:
        _fields(control, "control", 0)
        return cls()


@dataclass(slots=True)
class DescribedBroker:
    node_id: int
    host: str
    port: int
    fenced: bool


@dataclass(slots=True, kw_only=True)
class DescribeClusterResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_CLUSTER
    error_code: int = ErrorCode.NONE
    cluster_id: str | None = None
    controller_id: int = NO_NODE_ID
    brokers: list[DescribedBroker] = field(default_factory=list)

    def to_control(self) -> list:
        brokers = [[b.node_id, b.host, b.port, b.fenced] for b in self.brokers]
        return [self.error_code, self.cluster_id, self.controller_id, brokers]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeClusterResponse:
        error_code, cluster_id, controller_id, brokers = _fields(control, "control", 4)
        return cls(
            error_code=_int(error_code, "error_code", _I16),
            cluster_id=_opt_str(cluster_id, "cluster_id"),
            controller_id=_int(controller_id, "controller_id", _I32),
            brokers=[
                DescribedBroker(
                    _int(node_id, "brokers[].node_id", _I32),
                    _str(host, "brokers[].host"),
                    _int(port, "brokers[].port", _U16),
                    _bool(fenced, "brokers[].fenced"),
                )
                for node_id, host, port, fenced in _rows(brokers, "brokers", 4)
            ],
        )


# --- CreateTopics, DeleteTopics -------------------------------------------------------------


@dataclass(slots=True)
class NewTopic:
    name: str
    num_partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class TopicResult:
    """Outcome for one topic of CreateTopics, DeleteTopics or AlterTopicConfigs."""

    name: str
    error_code: int
    error_message: str | None = None


def _topic_results_control(results: list[TopicResult]) -> list:
    return [[[r.name, r.error_code, r.error_message] for r in results]]


def _topic_results(control: Any) -> list[TopicResult]:
    (rows,) = _fields(control, "control", 1)
    return [
        TopicResult(
            _str(name, "topics[].name"),
            _int(error_code, "topics[].error_code", _I16),
            _opt_str(message, "topics[].error_message"),
        )
        for name, error_code, message in _rows(rows, "topics", 3)
    ]


@dataclass(slots=True, kw_only=True)
class CreateTopicsRequest(Request):
    """Create topics; with validate_only the controller checks everything and creates nothing."""

    API_KEY: ClassVar[int] = ApiKey.CREATE_TOPICS
    topics: list[NewTopic] = field(default_factory=list)
    timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT
    validate_only: bool = False

    def to_control(self) -> list:
        rows = [[t.name, t.num_partitions, t.replication_factor, t.configs] for t in self.topics]
        return [rows, self.timeout_ms, self.validate_only]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> CreateTopicsRequest:
        rows, timeout_ms, validate_only = _fields(control, "control", 3)
        return cls(
            topics=[
                NewTopic(
                    _str(name, "topics[].name"),
                    _int(partitions, "topics[].num_partitions", _I32),
                    _int(factor, "topics[].replication_factor", _I16),
                    _str_map(configs, "topics[].configs"),
                )
                for name, partitions, factor, configs in _rows(rows, "topics", 4)
            ],
            timeout_ms=_int(timeout_ms, "timeout_ms", _I32),
            validate_only=_bool(validate_only, "validate_only"),
        )


@dataclass(slots=True, kw_only=True)
class CreateTopicsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.CREATE_TOPICS
    topics: list[TopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        return _topic_results_control(self.topics)

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> CreateTopicsResponse:
        return cls(topics=_topic_results(control))


@dataclass(slots=True, kw_only=True)
class DeleteTopicsRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.DELETE_TOPICS
    names: list[str] = field(default_factory=list)
    timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT

    def to_control(self) -> list:
        return [self.names, self.timeout_ms]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DeleteTopicsRequest:
        names, timeout_ms = _fields(control, "control", 2)
        return cls(names=_str_list(names, "names"), timeout_ms=_int(timeout_ms, "timeout_ms", _I32))


@dataclass(slots=True, kw_only=True)
class DeleteTopicsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.DELETE_TOPICS
    topics: list[TopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        return _topic_results_control(self.topics)

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DeleteTopicsResponse:
        return cls(topics=_topic_results(control))


# --- AlterTopicConfigs (Kafka's IncrementalAlterConfigs, topics only) ------------------------


@dataclass(slots=True)
class TopicConfigAlteration:
    """For one topic: keys to set (to these values) and keys to delete (back to the default)."""

    name: str
    set: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class AlterTopicConfigsRequest(Request):
    """Change topic configs incrementally; with validate_only the controller checks and changes nothing."""

    API_KEY: ClassVar[int] = ApiKey.ALTER_TOPIC_CONFIGS
    topics: list[TopicConfigAlteration] = field(default_factory=list)
    timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT
    validate_only: bool = False

    def to_control(self) -> list:
        rows = [[t.name, t.set, t.delete] for t in self.topics]
        return [rows, self.timeout_ms, self.validate_only]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterTopicConfigsRequest:
        rows, timeout_ms, validate_only = _fields(control, "control", 3)
        return cls(
            topics=[
                TopicConfigAlteration(
                    _str(name, "topics[].name"),
                    _str_map(set_, "topics[].set"),
                    _str_list(delete, "topics[].delete"),
                )
                for name, set_, delete in _rows(rows, "topics", 3)
            ],
            timeout_ms=_int(timeout_ms, "timeout_ms", _I32),
            validate_only=_bool(validate_only, "validate_only"),
        )


@dataclass(slots=True, kw_only=True)
class AlterTopicConfigsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.ALTER_TOPIC_CONFIGS
    topics: list[TopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        return _topic_results_control(self.topics)

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterTopicConfigsResponse:
        return cls(topics=_topic_results(control))


# --- Produce --------------------------------------------------------------------------------


@dataclass(slots=True)
class ProducePartition:
    """Record batches for one partition.

    Encoding takes one bytes-like object or a list of them (one or more concatenated batches);
    decoding gives one memoryview slice of the frame payload, never a copy.
    """

    partition: int
    records: Any


@dataclass(slots=True)
class ProduceTopic:
    topic: str
    partitions: list[ProducePartition]


@dataclass(slots=True, kw_only=True)
class ProduceRequest(Request):
    """Append batches. Control: [acks, timeout_ms, [[topic, [[partition, records_length]]]]]."""

    API_KEY: ClassVar[int] = ApiKey.PRODUCE
    acks: int = ACKS_ALL
    timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT
    topics: list[ProduceTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [
            [t.topic, [[p.partition, _records_bytes(p.records)] for p in t.partitions]] for t in self.topics
        ]
        return [self.acks, self.timeout_ms, topics]

    def payload_parts(self) -> list[Any]:
        return [piece for t in self.topics for p in t.partitions for piece in _records_parts(p.records)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ProduceRequest:
        acks, timeout_ms, rows = _fields(control, "control", 3)
        topics = []
        for topic, partitions in _rows(rows, "topics", 2):
            decoded = [
                ProducePartition(
                    _int(partition, "topics[].partitions[].partition", _I32),
                    payload.take(
                        _int(length, "topics[].partitions[].records_length", _U32),
                        "topics[].partitions[].records_length",
                    ),
                )
                for partition, length in _rows(partitions, "topics[].partitions", 2)
            ]
            topics.append(ProduceTopic(_str(topic, "topics[].topic"), decoded))
        return cls(acks=_int(acks, "acks", _I16), timeout_ms=_int(timeout_ms, "timeout_ms", _I32), topics=topics)


@dataclass(slots=True)
class ProducePartitionResult:
    partition: int
    error_code: int
    error_message: str | None = None
    base_offset: int = NO_OFFSET
    log_append_time_ms: int = NO_TIMESTAMP
    log_start_offset: int = NO_OFFSET


@dataclass(slots=True)
class ProduceTopicResult:
    topic: str
    partitions: list[ProducePartitionResult]


@dataclass(slots=True, kw_only=True)
class ProduceResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.PRODUCE
    topics: list[ProduceTopicResult] = field(default_factory=list)
    throttle_time_ms: int = 0

    def to_control(self) -> list:
        topics = [
            [
                t.topic,
                [
                    [
                        p.partition,
                        p.error_code,
                        p.error_message,
                        p.base_offset,
                        p.log_append_time_ms,
                        p.log_start_offset,
                    ]
                    for p in t.partitions
                ],
            ]
            for t in self.topics
        ]
        return [topics, self.throttle_time_ms]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ProduceResponse:
        rows, throttle_time_ms = _fields(control, "control", 2)
        path = "topics[].partitions[]."
        topics = [
            ProduceTopicResult(
                _str(topic, "topics[].topic"),
                [
                    ProducePartitionResult(
                        _int(partition, path + "partition", _I32),
                        _int(error_code, path + "error_code", _I16),
                        _opt_str(message, path + "error_message"),
                        _int(base_offset, path + "base_offset", _I64),
                        _int(append_time, path + "log_append_time_ms", _I64),
                        _int(start_offset, path + "log_start_offset", _I64),
                    )
                    for partition, error_code, message, base_offset, append_time, start_offset in _rows(
                        partitions, "topics[].partitions", 6
                    )
                ],
            )
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(topics=topics, throttle_time_ms=_int(throttle_time_ms, "throttle_time_ms", _I32))


# --- Fetch ----------------------------------------------------------------------------------


@dataclass(slots=True)
class FetchPartition:
    partition: int
    fetch_offset: int
    partition_max_bytes: int = FETCH_PARTITION_BYTES_MAX_DEFAULT
    current_leader_epoch: int = NO_LEADER_EPOCH


@dataclass(slots=True)
class FetchTopic:
    topic: str
    partitions: list[FetchPartition]


@dataclass(slots=True, kw_only=True)
class FetchRequest(Request):
    """Read batches from fetch_offset on; followers set replica_id to their node id.

    Control: [replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level,
              [[topic, [[partition, fetch_offset, partition_max_bytes, current_leader_epoch]]]]]
    """

    API_KEY: ClassVar[int] = ApiKey.FETCH
    replica_id: int = CONSUMER_REPLICA_ID
    max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT
    min_bytes: int = FETCH_MIN_BYTES_DEFAULT
    max_bytes: int = FETCH_BYTES_MAX_DEFAULT
    isolation_level: int = READ_UNCOMMITTED
    topics: list[FetchTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [
            [
                t.topic,
                [[p.partition, p.fetch_offset, p.partition_max_bytes, p.current_leader_epoch] for p in t.partitions],
            ]
            for t in self.topics
        ]
        return [self.replica_id, self.max_wait_ms, self.min_bytes, self.max_bytes, self.isolation_level, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> FetchRequest:
        replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level, rows = _fields(control, "control", 6)
        path = "topics[].partitions[]."
        topics = [
            FetchTopic(
                _str(topic, "topics[].topic"),
                [
                    FetchPartition(
                        _int(partition, path + "partition", _I32),
                        _int(offset, path + "fetch_offset", _I64),
                        _int(max_part_bytes, path + "partition_max_bytes", _I32),
                        _int(epoch, path + "current_leader_epoch", _I32),
                    )
                    for partition, offset, max_part_bytes, epoch in _rows(partitions, "topics[].partitions", 4)
                ],
            )
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(
            replica_id=_int(replica_id, "replica_id", _I32),
            max_wait_ms=_int(max_wait_ms, "max_wait_ms", _I32),
            min_bytes=_int(min_bytes, "min_bytes", _I32),
            max_bytes=_int(max_bytes, "max_bytes", _I32),
            isolation_level=_isolation_level(isolation_level),
            topics=topics,
        )


def _isolation_level(value: Any) -> int:
    if type(value) is not int or value not in _ISOLATION_LEVELS:
        raise _Malformed(
            f"isolation_level must be {READ_UNCOMMITTED} (read_uncommitted) or "
            f"{READ_COMMITTED} (read_committed), got {_describe(value)}"
        )
    return value


@dataclass(slots=True)
class FetchPartitionResult:
    """One partition of a fetch response.

    `records`: to encode, one bytes-like object, a list of them, or objects with an int
    `nbytes` (file regions the broker's writer sends with sendfile); decoded, one memoryview
    slice of the frame payload.
    """

    partition: int
    error_code: int
    high_watermark: int = NO_OFFSET
    last_stable_offset: int = NO_OFFSET
    log_start_offset: int = NO_OFFSET
    records: Any = b""
    # read_committed only: (producer_id, first_offset) of each aborted transaction overlapping
    # the records returned, so the consumer can drop its batches by header. Sent as an optional
    # 7th row field, a flat [pid, first, pid, first, ...] list, and only when not empty.
    aborted_transactions: list[tuple[int, int]] | None = None


def _flat_aborted(pairs: list[tuple[int, int]]) -> list[int]:
    return [n for pair in pairs for n in pair]


def _aborted_pairs(value: Any, path: str) -> list[tuple[int, int]]:
    flat = _int_list(value, path, _I64)
    if len(flat) % 2 or not flat:
        raise _Malformed(f"{path} must hold a non-empty even count of ints (producer_id, first_offset pairs)")
    return list(zip(flat[0::2], flat[1::2]))


@dataclass(slots=True)
class FetchTopicResult:
    topic: str
    partitions: list[FetchPartitionResult]


@dataclass(slots=True, kw_only=True)
class FetchResponse(Response):
    """Control: [throttle_time_ms, error_code, [[topic, [[partition, error_code, high_watermark,
    last_stable_offset, log_start_offset, records_length, aborted_transactions?]]]]]; records
    follow as payload (aborted_transactions: see FetchPartitionResult)."""

    API_KEY: ClassVar[int] = ApiKey.FETCH
    throttle_time_ms: int = 0
    error_code: int = ErrorCode.NONE
    topics: list[FetchTopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [
            [
                t.topic,
                [
                    [
                        p.partition,
                        p.error_code,
                        p.high_watermark,
                        p.last_stable_offset,
                        p.log_start_offset,
                        _records_bytes(p.records),
                    ]
                    if not p.aborted_transactions
                    else [
                        p.partition, p.error_code, p.high_watermark, p.last_stable_offset, p.log_start_offset,
                        _records_bytes(p.records), _flat_aborted(p.aborted_transactions),
                    ]
                    for p in t.partitions
                ],
            ]
            for t in self.topics
        ]
        return [self.throttle_time_ms, self.error_code, topics]

    def payload_parts(self) -> list[Any]:
        return [piece for t in self.topics for p in t.partitions for piece in _records_parts(p.records)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> FetchResponse:
        throttle_time_ms, error_code, rows = _fields(control, "control", 3)
        path = "topics[].partitions[]."
        topics = []
        for topic, partitions in _rows(rows, "topics", 2):
            decoded = []
            for row in _list(partitions, "topics[].partitions"):
                if (type(row) is not list and type(row) is not tuple) or len(row) not in (6, 7):
                    raise _Malformed(f"topics[].partitions[] must be a list of 6 or 7 fields, got {_describe(row)}")
                partition, part_error, high_watermark, stable, start, length = row[:6]
                decoded.append(FetchPartitionResult(
                    _int(partition, path + "partition", _I32),
                    _int(part_error, path + "error_code", _I16),
                    _int(high_watermark, path + "high_watermark", _I64),
                    _int(stable, path + "last_stable_offset", _I64),
                    _int(start, path + "log_start_offset", _I64),
                    payload.take(_int(length, path + "records_length", _U32), path + "records_length"),
                    _aborted_pairs(row[6], path + "aborted_transactions") if len(row) == 7 else None,
                ))
            topics.append(FetchTopicResult(_str(topic, "topics[].topic"), decoded))
        return cls(
            throttle_time_ms=_int(throttle_time_ms, "throttle_time_ms", _I32),
            error_code=_int(error_code, "error_code", _I16),
            topics=topics,
        )


# --- ListOffsets ----------------------------------------------------------------------------


@dataclass(slots=True)
class ListOffsetsPartition:
    """timestamp: LATEST_TIMESTAMP (-1), EARLIEST_TIMESTAMP (-2), or a time in ms: the first
    offset whose timestamp is at least it."""

    partition: int
    timestamp: int = LATEST_TIMESTAMP


@dataclass(slots=True)
class ListOffsetsTopic:
    topic: str
    partitions: list[ListOffsetsPartition]


@dataclass(slots=True, kw_only=True)
class ListOffsetsRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.LIST_OFFSETS
    replica_id: int = CONSUMER_REPLICA_ID
    isolation_level: int = READ_UNCOMMITTED
    topics: list[ListOffsetsTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [[t.topic, [[p.partition, p.timestamp] for p in t.partitions]] for t in self.topics]
        return [self.replica_id, self.isolation_level, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ListOffsetsRequest:
        replica_id, isolation_level, rows = _fields(control, "control", 3)
        topics = [
            ListOffsetsTopic(
                _str(topic, "topics[].topic"),
                [
                    ListOffsetsPartition(
                        _int(partition, "topics[].partitions[].partition", _I32),
                        _int(timestamp, "topics[].partitions[].timestamp", _I64),
                    )
                    for partition, timestamp in _rows(partitions, "topics[].partitions", 2)
                ],
            )
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(
            replica_id=_int(replica_id, "replica_id", _I32),
            isolation_level=_isolation_level(isolation_level),
            topics=topics,
        )


@dataclass(slots=True)
class ListOffsetsPartitionResult:
    partition: int
    error_code: int
    timestamp: int = NO_TIMESTAMP
    offset: int = NO_OFFSET


@dataclass(slots=True)
class ListOffsetsTopicResult:
    topic: str
    partitions: list[ListOffsetsPartitionResult]


@dataclass(slots=True, kw_only=True)
class ListOffsetsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.LIST_OFFSETS
    topics: list[ListOffsetsTopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [
            [t.topic, [[p.partition, p.error_code, p.timestamp, p.offset] for p in t.partitions]]
            for t in self.topics
        ]
        return [topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ListOffsetsResponse:
        (rows,) = _fields(control, "control", 1)
        path = "topics[].partitions[]."
        topics = [
            ListOffsetsTopicResult(
                _str(topic, "topics[].topic"),
                [
                    ListOffsetsPartitionResult(
                        _int(partition, path + "partition", _I32),
                        _int(error_code, path + "error_code", _I16),
                        _int(timestamp, path + "timestamp", _I64),
                        _int(offset, path + "offset", _I64),
                    )
                    for partition, error_code, timestamp, offset in _rows(partitions, "topics[].partitions", 4)
                ],
            )
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(topics=topics)


# --- registry -------------------------------------------------------------------------------

# api_key -> (request class, response class), and api_key -> (min_version, max_version).
MESSAGE_TYPES: dict[int, tuple[type[Request], type[Response]]] = {}
API_VERSIONS: dict[int, tuple[int, int]] = {}


def register_api(
    request_cls: type[Request], response_cls: type[Response], min_version: int = 0, max_version: int = 0
) -> None:
    """Make an API decodable and advertise its versions in ApiVersions."""
    api_key = request_cls.API_KEY
    if response_cls.API_KEY != api_key:
        raise ValueError(f"{request_cls.__name__} and {response_cls.__name__} have different API keys")
    if api_key in MESSAGE_TYPES:
        raise ValueError(f"api key {api_key} is already registered")
    if not 0 <= min_version <= max_version:
        raise ValueError(f"bad version range {min_version}..{max_version} for api key {api_key}")
    MESSAGE_TYPES[api_key] = (request_cls, response_cls)
    API_VERSIONS[api_key] = (min_version, max_version)


register_api(ProduceRequest, ProduceResponse)
register_api(FetchRequest, FetchResponse)
register_api(ListOffsetsRequest, ListOffsetsResponse)
register_api(MetadataRequest, MetadataResponse)
register_api(ApiVersionsRequest, ApiVersionsResponse)
register_api(CreateTopicsRequest, CreateTopicsResponse)
register_api(DeleteTopicsRequest, DeleteTopicsResponse)
register_api(DescribeClusterRequest, DescribeClusterResponse)
register_api(DescribeTopicRequest, DescribeTopicResponse)
register_api(AlterTopicConfigsRequest, AlterTopicConfigsResponse)


def api_name(api_key: int) -> str:
    """Readable name of an API key for messages and logs, known or not."""
    try:
        return ApiKey(api_key).name
    except ValueError:
        return f"api key {api_key}"


def message_types(api_key: int, api_version: int) -> tuple[type[Request], type[Response]]:
    """The request and response classes of an API version; raises UnsupportedApi/Version errors."""
    types = MESSAGE_TYPES.get(api_key)
    if types is None:
        reserved = " is reserved but not implemented" if api_key in ApiKey._value2member_map_ else " is unknown"
        raise UnsupportedApiError(f"{api_name(api_key)} ({api_key}){reserved}")
    low, high = API_VERSIONS[api_key]
    if not low <= api_version <= high:
        raise UnsupportedVersionError(
            f"{api_name(api_key)} version {api_version} is not supported (supported: {low} to {high})"
        )
    return types


def decode_request(frame: RequestFrame) -> Request:
    """The typed request in a frame. Raises UnsupportedApiError, UnsupportedVersionError or
    InvalidRequestError; for all of them the broker may answer with encode_error_response."""
    request_cls, _ = message_types(frame.api_key, frame.api_version)
    return request_cls.from_control(frame.control, frame.payload)


def decode_response(api_key: int, frame: ResponseFrame, api_version: int = 0) -> Response:
    """The typed response to a request of `api_key`. Raises RequestRejectedError when the broker
    sent an error response instead, InvalidResponseError on a malformed control part."""
    _, response_cls = message_types(api_key, api_version)
    if type(frame.control) is dict:
        raise _rejection(api_key, frame.control)
    return response_cls.from_control(frame.control, frame.payload)


# An error response is a msgpack map, while every typed response is a list: a broker that
# cannot decode a request still answers it, so the client learns why instead of seeing the
# connection drop. Only frame-level errors (no trustworthy correlation id) close a connection.
_ERROR_CODE_KEY = "error_code"
_ERROR_MESSAGE_KEY = "error_message"


def encode_error_response(
    correlation_id: int,
    error_code: int,
    error_message: str,
    max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT,
) -> list[Any]:
    """Frame the answer to a request that could not be decoded (see decode_response)."""
    control = {_ERROR_CODE_KEY: int(error_code), _ERROR_MESSAGE_KEY: error_message}
    return encode_response(correlation_id, control, (), max_frame_bytes)


def _rejection(api_key: int, control: dict) -> ProtocolError:
    code = control.get(_ERROR_CODE_KEY)
    message = control.get(_ERROR_MESSAGE_KEY)
    if type(code) is not int or type(message) is not str or len(control) != 2:
        return InvalidResponseError(
            f"{api_name(api_key)} error response must be a map of error_code (int) and error_message (str)"
        )
    known = ErrorCode.lookup(code)
    return RequestRejectedError(f"broker rejected the {api_name(api_key)} request: {message}", known or code)


def encode_request_message(
    request: Request,
    correlation_id: int,
    api_version: int | None = None,
    max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT,
) -> list[Any]:
    """Frame a typed request for writelines (newest supported version unless given)."""
    version = API_VERSIONS[request.API_KEY][1] if api_version is None else api_version
    control = request.to_control()
    return encode_request(
        request.API_KEY, version, correlation_id, control, request.payload_parts(), max_frame_bytes
    )


def encode_response_message(
    response: Response, correlation_id: int, max_frame_bytes: int = FRAME_BYTES_MAX_DEFAULT
) -> list[Any]:
    """Frame a typed response for writelines; record bytes stay the caller's objects."""
    return encode_response(correlation_id, response.to_control(), response.payload_parts(), max_frame_bytes)


# --- Broker to broker: Raft, broker lifecycle, quorum status ---------------------------------
# Appended by the embedded Raft controller (broker/raft/, broker/controller.py). The Raft
# message inside a Raft request is opaque here (a list the broker's Raft code builds and checks
# with broker.raft.messages.message_from_wire): this module stays ignorant of Raft.


@dataclass(slots=True, kw_only=True)
class _RaftEnvelope(Request):
    """One Raft peer message, one way: the receiving broker sends no response (as for an acks=0
    produce), since Raft answers with messages of its own and tolerates loss."""

    message: list = field(default_factory=list)

    def to_control(self) -> list:
        return [self.message]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader):
        (message,) = _fields(control, "control", 1)
        return cls(message=list(_list(message, "message")))


@dataclass(slots=True, kw_only=True)
class _RaftAck(Response):
    """Never sent (Raft requests are one way); registered so the API has a response type."""

    def to_control(self) -> list:
        return []

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader):
        _fields(control, "control", 0)
        return cls()


@dataclass(slots=True, kw_only=True)
class RaftVoteRequest(_RaftEnvelope):
    """PreVote, PreVoteResp, Vote, VoteResp."""

    API_KEY: ClassVar[int] = ApiKey.RAFT_VOTE


@dataclass(slots=True, kw_only=True)
class RaftVoteResponse(_RaftAck):
    API_KEY: ClassVar[int] = ApiKey.RAFT_VOTE


@dataclass(slots=True, kw_only=True)
class RaftAppendEntriesRequest(_RaftEnvelope):
    """AppendEntries, AppendResp, Heartbeat, HeartbeatResp."""

    API_KEY: ClassVar[int] = ApiKey.RAFT_APPEND_ENTRIES


@dataclass(slots=True, kw_only=True)
class RaftAppendEntriesResponse(_RaftAck):
    API_KEY: ClassVar[int] = ApiKey.RAFT_APPEND_ENTRIES


@dataclass(slots=True, kw_only=True)
class RaftInstallSnapshotRequest(_RaftEnvelope):
    """InstallSnapshot, SnapshotResp."""

    API_KEY: ClassVar[int] = ApiKey.RAFT_INSTALL_SNAPSHOT


@dataclass(slots=True, kw_only=True)
class RaftInstallSnapshotResponse(_RaftAck):
    API_KEY: ClassVar[int] = ApiKey.RAFT_INSTALL_SNAPSHOT


@dataclass(slots=True, kw_only=True)
class BrokerRegistrationRequest(Request):
    """A broker (re)starting tells the controller where it listens; `incarnation` is new at
    every process start, so the controller can tell a restart from a duplicate."""

    API_KEY: ClassVar[int] = ApiKey.BROKER_REGISTRATION
    node_id: int = NO_NODE_ID
    host: str = ""
    port: int = 0
    incarnation: str = ""

    def to_control(self) -> list:
        return [self.node_id, self.host, self.port, self.incarnation]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> BrokerRegistrationRequest:
        node_id, host, port, incarnation = _fields(control, "control", 4)
        return cls(
            node_id=_int(node_id, "node_id", _I32),
            host=_str(host, "host"),
            port=_int(port, "port", _U16),
            incarnation=_str(incarnation, "incarnation"),
        )


@dataclass(slots=True, kw_only=True)
class BrokerRegistrationResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.BROKER_REGISTRATION
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    controller_id: int = NO_NODE_ID

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.controller_id]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> BrokerRegistrationResponse:
        error_code, message, controller_id = _fields(control, "control", 3)
        return cls(
            error_code=_int(error_code, "error_code", _I16),
            error_message=_opt_str(message, "error_message"),
            controller_id=_int(controller_id, "controller_id", _I32),
        )


@dataclass(slots=True, kw_only=True)
class BrokerHeartbeatRequest(Request):
    """A registered broker is alive; the controller fences one it stops hearing from."""

    API_KEY: ClassVar[int] = ApiKey.BROKER_HEARTBEAT
    node_id: int = NO_NODE_ID
    incarnation: str = ""

    def to_control(self) -> list:
        return [self.node_id, self.incarnation]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> BrokerHeartbeatRequest:
        node_id, incarnation = _fields(control, "control", 2)
        return cls(node_id=_int(node_id, "node_id", _I32), incarnation=_str(incarnation, "incarnation"))


@dataclass(slots=True, kw_only=True)
class BrokerHeartbeatResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.BROKER_HEARTBEAT
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    controller_id: int = NO_NODE_ID
    fenced: bool = False

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.controller_id, self.fenced]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> BrokerHeartbeatResponse:
        error_code, message, controller_id, fenced = _fields(control, "control", 4)
        return cls(
            error_code=_int(error_code, "error_code", _I16),
            error_message=_opt_str(message, "error_message"),
            controller_id=_int(controller_id, "controller_id", _I32),
            fenced=_bool(fenced, "fenced"),
        )


@dataclass(slots=True, kw_only=True)
class DescribeQuorumRequest(Request):
    """The controller quorum as its leader sees it; other brokers answer NOT_CONTROLLER."""

    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_QUORUM

    def to_control(self) -> list:
        return []

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeQuorumRequest:
        _fields(control, "control", 0)
        return cls()


@dataclass(slots=True)
class QuorumReplica:
    """One member of the metadata quorum as the leader tracks it. `match_index`: highest log
    index known to be on its disk; `lag`: leader's last index minus that; `state`: the
    leader's replication mode for it (leader, probe, replicate, snapshot)."""

    node_id: int
    match_index: int
    lag: int
    state: str
    recent_active: bool


def _quorum_rows(value: Any, path: str) -> list[QuorumReplica]:
    return [
        QuorumReplica(
            _int(node_id, path + "[].node_id", _I32),
            _int(match_index, path + "[].match_index", _I64),
            _int(lag, path + "[].lag", _I64),
            _str(state, path + "[].state"),
            _bool(active, path + "[].recent_active"),
        )
        for node_id, match_index, lag, state, active in _rows(value, path, 5)
    ]


@dataclass(slots=True, kw_only=True)
class DescribeQuorumResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_QUORUM
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    leader_id: int = NO_NODE_ID
    term: int = 0
    commit_index: int = 0
    last_index: int = 0
    voters: list[QuorumReplica] = field(default_factory=list)
    observers: list[QuorumReplica] = field(default_factory=list)

    def to_control(self) -> list:
        def rows(replicas: list[QuorumReplica]) -> list:
            return [[r.node_id, r.match_index, r.lag, r.state, r.recent_active] for r in replicas]

        return [self.error_code, self.error_message, self.leader_id, self.term, self.commit_index,
                self.last_index, rows(self.voters), rows(self.observers)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeQuorumResponse:
        error_code, message, leader_id, term, commit, last, voters, observers = _fields(control, "control", 8)
        return cls(
            error_code=_int(error_code, "error_code", _I16),
            error_message=_opt_str(message, "error_message"),
            leader_id=_int(leader_id, "leader_id", _I32),
            term=_int(term, "term", _I64),
            commit_index=_int(commit, "commit_index", _I64),
            last_index=_int(last, "last_index", _I64),
            voters=_quorum_rows(voters, "voters"),
            observers=_quorum_rows(observers, "observers"),
        )


register_api(RaftVoteRequest, RaftVoteResponse)
register_api(RaftAppendEntriesRequest, RaftAppendEntriesResponse)
register_api(RaftInstallSnapshotRequest, RaftInstallSnapshotResponse)
register_api(BrokerRegistrationRequest, BrokerRegistrationResponse)
register_api(BrokerHeartbeatRequest, BrokerHeartbeatResponse)
register_api(DescribeQuorumRequest, DescribeQuorumResponse)


# --- Replication: OffsetsForLeaderEpoch, AlterPartition ---------------------------------------


@dataclass(slots=True)
class EpochQuery:
    """Where did `leader_epoch` end? `current_leader_epoch` is the asker's view of the leader's
    epoch (the leader refuses a stale or future one, so an answer is never from a deposed leader)."""

    partition: int
    current_leader_epoch: int
    leader_epoch: int


@dataclass(slots=True, kw_only=True)
class OffsetsForLeaderEpochRequest(Request):
    """Control: [replica_id, [[topic, [[partition, current_leader_epoch, leader_epoch]]]]]."""

    API_KEY: ClassVar[int] = ApiKey.OFFSETS_FOR_LEADER_EPOCH
    replica_id: int = CONSUMER_REPLICA_ID
    topics: list[tuple[str, list[EpochQuery]]] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.replica_id, [[topic, [[q.partition, q.current_leader_epoch, q.leader_epoch] for q in queries]]
                                  for topic, queries in self.topics]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetsForLeaderEpochRequest:
        replica_id, rows = _fields(control, "control", 2)
        path = "topics[].partitions[]."
        topics = [
            (_str(topic, "topics[].topic"), [
                EpochQuery(_int(partition, path + "partition", _I32), _int(current, path + "current_leader_epoch", _I32),
                           _int(epoch, path + "leader_epoch", _I32))
                for partition, current, epoch in _rows(partitions, "topics[].partitions", 3)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(replica_id=_int(replica_id, "replica_id", _I32), topics=topics)


@dataclass(slots=True)
class EpochEndOffset:
    """The largest epoch <= the asked one in the leader's log and the offset where it ended
    (-1, -1: the leader cannot tell; the follower falls back to its high watermark)."""

    partition: int
    error_code: int
    leader_epoch: int = NO_LEADER_EPOCH
    end_offset: int = NO_OFFSET


@dataclass(slots=True, kw_only=True)
class OffsetsForLeaderEpochResponse(Response):
    """Control: [[topic, [[partition, error_code, leader_epoch, end_offset]]]]."""

    API_KEY: ClassVar[int] = ApiKey.OFFSETS_FOR_LEADER_EPOCH
    topics: list[tuple[str, list[EpochEndOffset]]] = field(default_factory=list)

    def to_control(self) -> list:
        return [[[topic, [[r.partition, r.error_code, r.leader_epoch, r.end_offset] for r in rows]]
                 for topic, rows in self.topics]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetsForLeaderEpochResponse:
        (rows,) = _fields(control, "control", 1)
        path = "topics[].partitions[]."
        topics = [
            (_str(topic, "topics[].topic"), [
                EpochEndOffset(_int(partition, path + "partition", _I32), _int(code, path + "error_code", _I16),
                               _int(epoch, path + "leader_epoch", _I32), _int(end, path + "end_offset", _I64))
                for partition, code, epoch, end in _rows(partitions, "topics[].partitions", 4)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(topics=topics)


@dataclass(slots=True)
class IsrChange:
    """One partition's requested ISR. `partition_epoch` is the version the leader last saw; the
    controller refuses a change made from an older one (INVALID_UPDATE_VERSION)."""

    partition: int
    leader_epoch: int
    partition_epoch: int
    isr: list[int]


@dataclass(slots=True, kw_only=True)
class AlterPartitionRequest(Request):
    """A partition leader asks the controller to commit ISR changes.

    Control: [broker_id, incarnation, [[topic, [[partition, leader_epoch, partition_epoch, [isr]]]]]]."""

    API_KEY: ClassVar[int] = ApiKey.ALTER_PARTITION
    broker_id: int = NO_NODE_ID
    incarnation: str = ""
    topics: list[tuple[str, list[IsrChange]]] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.broker_id, self.incarnation,
                [[topic, [[c.partition, c.leader_epoch, c.partition_epoch, list(c.isr)] for c in changes]]
                 for topic, changes in self.topics]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterPartitionRequest:
        broker_id, incarnation, rows = _fields(control, "control", 3)
        path = "topics[].partitions[]."
        topics = [
            (_str(topic, "topics[].topic"), [
                IsrChange(_int(partition, path + "partition", _I32), _int(epoch, path + "leader_epoch", _I32),
                          _int(version, path + "partition_epoch", _I32),
                          [_int(node, path + "isr[]", _I32) for node in _list(isr, path + "isr")])
                for partition, epoch, version, isr in _rows(partitions, "topics[].partitions", 4)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(broker_id=_int(broker_id, "broker_id", _I32), incarnation=_str(incarnation, "incarnation"),
                   topics=topics)


@dataclass(slots=True)
class IsrChangeResult:
    """The partition's state after the request: committed as asked, or as it already was."""

    partition: int
    error_code: int
    error_message: str | None = None
    leader_id: int = NO_NODE_ID
    leader_epoch: int = NO_LEADER_EPOCH
    partition_epoch: int = -1
    isr: list[int] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class AlterPartitionResponse(Response):
    """Control: [error_code, error_message, controller_id, [[topic, [[partition, error_code,
    error_message, leader_id, leader_epoch, partition_epoch, [isr]]]]]]."""

    API_KEY: ClassVar[int] = ApiKey.ALTER_PARTITION
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    controller_id: int = NO_NODE_ID
    topics: list[tuple[str, list[IsrChangeResult]]] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.controller_id,
                [[topic, [[r.partition, r.error_code, r.error_message, r.leader_id, r.leader_epoch,
                           r.partition_epoch, list(r.isr)] for r in rows]]
                 for topic, rows in self.topics]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterPartitionResponse:
        error_code, message, controller_id, rows = _fields(control, "control", 4)
        path = "topics[].partitions[]."
        topics = [
            (_str(topic, "topics[].topic"), [
                IsrChangeResult(
                    _int(partition, path + "partition", _I32), _int(code, path + "error_code", _I16),
                    _opt_str(text, path + "error_message"), _int(leader, path + "leader_id", _I32),
                    _int(epoch, path + "leader_epoch", _I32), _int(version, path + "partition_epoch", _I32),
                    [_int(node, path + "isr[]", _I32) for node in _list(isr, path + "isr")])
                for partition, code, text, leader, epoch, version, isr in _rows(partitions, "topics[].partitions", 7)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(error_code=_int(error_code, "error_code", _I16), error_message=_opt_str(message, "error_message"),
                   controller_id=_int(controller_id, "controller_id", _I32), topics=topics)


@dataclass(slots=True, kw_only=True)
class ControlledShutdownRequest(Request):
    """A broker stopping gracefully asks the controller to move its leaderships to other in-sync
    replicas first (and to take it out of every ISR), so clients fail over before it goes.

    Control: [broker_id, incarnation]."""

    API_KEY: ClassVar[int] = ApiKey.CONTROLLED_SHUTDOWN
    broker_id: int = NO_NODE_ID
    incarnation: str = ""

    def to_control(self) -> list:
        return [self.broker_id, self.incarnation]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ControlledShutdownRequest:
        broker_id, incarnation = _fields(control, "control", 2)
        return cls(broker_id=_int(broker_id, "broker_id", _I32), incarnation=_str(incarnation, "incarnation"))


@dataclass(slots=True, kw_only=True)
class ControlledShutdownResponse(Response):
    """`partitions_remaining`: partitions the broker still leads after the change (those with
    no other in-sync replica to take over).

    Control: [error_code, error_message, controller_id, partitions_remaining]."""

    API_KEY: ClassVar[int] = ApiKey.CONTROLLED_SHUTDOWN
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    controller_id: int = NO_NODE_ID
    partitions_remaining: int = 0

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.controller_id, self.partitions_remaining]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ControlledShutdownResponse:
        error_code, message, controller_id, remaining = _fields(control, "control", 4)
        return cls(error_code=_int(error_code, "error_code", _I16), error_message=_opt_str(message, "error_message"),
                   controller_id=_int(controller_id, "controller_id", _I32),
                   partitions_remaining=_int(remaining, "partitions_remaining", _I32))


register_api(OffsetsForLeaderEpochRequest, OffsetsForLeaderEpochResponse)
register_api(AlterPartitionRequest, AlterPartitionResponse)
register_api(ControlledShutdownRequest, ControlledShutdownResponse)


# --- Exactly-once: InitProducerId ---------------------------------------------------------------

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1


@dataclass(slots=True, kw_only=True)
class InitProducerIdRequest(Request):
    """An idempotent producer (no transactional_id) gets a fresh producer id at epoch 0; a
    transactional one gets the id bound to its transactional_id with the epoch raised, which
    fences any older producer using the same transactional_id.

    Control: [transactional_id, transaction_timeout_ms, producer_id, producer_epoch]."""

    API_KEY: ClassVar[int] = ApiKey.INIT_PRODUCER_ID
    transactional_id: str | None = None
    transaction_timeout_ms: int = 60_000
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH

    def to_control(self) -> list:
        return [self.transactional_id, self.transaction_timeout_ms, self.producer_id, self.producer_epoch]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> InitProducerIdRequest:
        transactional_id, timeout_ms, producer_id, epoch = _fields(control, "control", 4)
        return cls(transactional_id=_opt_str(transactional_id, "transactional_id"),
                   transaction_timeout_ms=_int(timeout_ms, "transaction_timeout_ms", _I32),
                   producer_id=_int(producer_id, "producer_id", _I64), producer_epoch=_int(epoch, "producer_epoch", _I16))


@dataclass(slots=True, kw_only=True)
class InitProducerIdResponse(Response):
    """Control: [throttle_time_ms, error_code, error_message, producer_id, producer_epoch]."""

    API_KEY: ClassVar[int] = ApiKey.INIT_PRODUCER_ID
    throttle_time_ms: int = 0
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH

    def to_control(self) -> list:
        return [self.throttle_time_ms, self.error_code, self.error_message, self.producer_id, self.producer_epoch]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> InitProducerIdResponse:
        throttle, error_code, message, producer_id, epoch = _fields(control, "control", 5)
        return cls(throttle_time_ms=_int(throttle, "throttle_time_ms", _I32), error_code=_int(error_code, "error_code", _I16),
                   error_message=_opt_str(message, "error_message"), producer_id=_int(producer_id, "producer_id", _I64),
                   producer_epoch=_int(epoch, "producer_epoch", _I16))


register_api(InitProducerIdRequest, InitProducerIdResponse)


# --- Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, -------------
# --- OffsetCommit, OffsetFetch, ListGroups, DescribeGroups (broker/groups/) -------------------
# Kafka's API keys and error codes, tidelog's own shapes: the coordinator assigns partitions
# itself (server-side, as in Kafka's KIP-848), so JoinGroup names the assignor instead of
# carrying client-side protocol metadata, and SyncGroup hands a member its own assignment.
# `owned`/`assignment` fields are lists of TopicPartitions: [topic, [partition, ...]].


@dataclass(slots=True)
class TopicPartitions:
    topic: str
    partitions: list[int]


def _tps_control(rows: list[TopicPartitions]) -> list:
    return [[row.topic, list(row.partitions)] for row in rows]


def _tps(value: Any, path: str) -> list[TopicPartitions]:
    return [
        TopicPartitions(_str(topic, path + "[].topic"), _int_list(partitions, path + "[].partitions", _I32))
        for topic, partitions in _rows(value, path, 2)
    ]


def _error_fields(control: Any, count: int) -> tuple[int, str | None, list | tuple]:
    """(error_code, error_message, the remaining fields) of a response that starts with both."""
    row = _fields(control, "control", count)
    return _int(row[0], "error_code", _I16), _opt_str(row[1], "error_message"), row[2:]


@dataclass(slots=True, kw_only=True)
class FindCoordinatorRequest(Request):
    """Which broker coordinates the group named `key` (today: the active controller)."""

    API_KEY: ClassVar[int] = ApiKey.FIND_COORDINATOR
    key: str = ""

    def to_control(self) -> list:
        return [self.key]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> FindCoordinatorRequest:
        (key,) = _fields(control, "control", 1)
        return cls(key=_str(key, "key"))


@dataclass(slots=True, kw_only=True)
class FindCoordinatorResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.FIND_COORDINATOR
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    node_id: int = NO_NODE_ID
    host: str = ""
    port: int = 0

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.node_id, self.host, self.port]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> FindCoordinatorResponse:
        error_code, message, (node_id, host, port) = _error_fields(control, 5)
        return cls(error_code=error_code, error_message=message, node_id=_int(node_id, "node_id", _I32),
                   host=_str(host, "host"), port=_int(port, "port", _U16))


@dataclass(slots=True, kw_only=True)
class JoinGroupRequest(Request):
    """Join (member_id "") or rejoin a group. `owned` is what the member still holds (kept where
    no other member holds it: a rejoin after a coordinator change moves nothing)."""

    API_KEY: ClassVar[int] = ApiKey.JOIN_GROUP
    group_id: str = ""
    member_id: str = ""
    group_instance_id: str | None = None
    client_id: str = ""
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = 300_000
    topics: list[str] = field(default_factory=list)
    assignor: str = "sticky"
    owned: list[TopicPartitions] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.group_id, self.member_id, self.group_instance_id, self.client_id, self.session_timeout_ms,
                self.rebalance_timeout_ms, list(self.topics), self.assignor, _tps_control(self.owned)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> JoinGroupRequest:
        group, member, instance, client, session, rebalance, topics, assignor, owned = _fields(control, "control", 9)
        return cls(group_id=_str(group, "group_id"), member_id=_str(member, "member_id"),
                   group_instance_id=_opt_str(instance, "group_instance_id"), client_id=_str(client, "client_id"),
                   session_timeout_ms=_int(session, "session_timeout_ms", _I32),
                   rebalance_timeout_ms=_int(rebalance, "rebalance_timeout_ms", _I32),
                   topics=_str_list(topics, "topics"), assignor=_str(assignor, "assignor"), owned=_tps(owned, "owned"))


@dataclass(slots=True, kw_only=True)
class JoinGroupResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.JOIN_GROUP
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    generation: int = -1
    member_id: str = ""
    heartbeat_interval_ms: int = 0

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.generation, self.member_id, self.heartbeat_interval_ms]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> JoinGroupResponse:
        error_code, message, (generation, member, interval) = _error_fields(control, 5)
        return cls(error_code=error_code, error_message=message, generation=_int(generation, "generation", _I32),
                   member_id=_str(member, "member_id"),
                   heartbeat_interval_ms=_int(interval, "heartbeat_interval_ms", _I32))


@dataclass(slots=True, kw_only=True)
class SyncGroupRequest(Request):
    """Report what this member holds and get what it may hold now (its assignment)."""

    API_KEY: ClassVar[int] = ApiKey.SYNC_GROUP
    group_id: str = ""
    member_id: str = ""
    generation: int = -1
    owned: list[TopicPartitions] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.group_id, self.member_id, self.generation, _tps_control(self.owned)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SyncGroupRequest:
        group, member, generation, owned = _fields(control, "control", 4)
        return cls(group_id=_str(group, "group_id"), member_id=_str(member, "member_id"),
                   generation=_int(generation, "generation", _I32), owned=_tps(owned, "owned"))


@dataclass(slots=True, kw_only=True)
class SyncGroupResponse(Response):
    """`assignment`: the partitions this member may hold now. `pending`: more are coming once
    other members release them (the member syncs again when a heartbeat says so)."""

    API_KEY: ClassVar[int] = ApiKey.SYNC_GROUP
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    generation: int = -1
    assignment: list[TopicPartitions] = field(default_factory=list)
    pending: bool = False

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.generation, _tps_control(self.assignment), self.pending]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SyncGroupResponse:
        error_code, message, (generation, assignment, pending) = _error_fields(control, 5)
        return cls(error_code=error_code, error_message=message, generation=_int(generation, "generation", _I32),
                   assignment=_tps(assignment, "assignment"), pending=_bool(pending, "pending"))


@dataclass(slots=True, kw_only=True)
class HeartbeatRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.HEARTBEAT
    group_id: str = ""
    member_id: str = ""
    generation: int = -1

    def to_control(self) -> list:
        return [self.group_id, self.member_id, self.generation]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> HeartbeatRequest:
        group, member, generation = _fields(control, "control", 3)
        return cls(group_id=_str(group, "group_id"), member_id=_str(member, "member_id"),
                   generation=_int(generation, "generation", _I32))


@dataclass(slots=True, kw_only=True)
class HeartbeatResponse(Response):
    """`sync`: this member's assignment changed (or partitions it waits for were released):
    call SyncGroup now."""

    API_KEY: ClassVar[int] = ApiKey.HEARTBEAT
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    generation: int = -1
    sync: bool = False

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.generation, self.sync]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> HeartbeatResponse:
        error_code, message, (generation, sync) = _error_fields(control, 4)
        return cls(error_code=error_code, error_message=message, generation=_int(generation, "generation", _I32),
                   sync=_bool(sync, "sync"))


@dataclass(slots=True, kw_only=True)
class LeaveGroupRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.LEAVE_GROUP
    group_id: str = ""
    member_id: str = ""
    group_instance_id: str | None = None
    reason: str = ""

    def to_control(self) -> list:
        return [self.group_id, self.member_id, self.group_instance_id, self.reason]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> LeaveGroupRequest:
        group, member, instance, reason = _fields(control, "control", 4)
        return cls(group_id=_str(group, "group_id"), member_id=_str(member, "member_id"),
                   group_instance_id=_opt_str(instance, "group_instance_id"), reason=_str(reason, "reason"))


@dataclass(slots=True, kw_only=True)
class LeaveGroupResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.LEAVE_GROUP
    error_code: int = ErrorCode.NONE
    error_message: str | None = None

    def to_control(self) -> list:
        return [self.error_code, self.error_message]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> LeaveGroupResponse:
        error_code, message, _ = _error_fields(control, 2)
        return cls(error_code=error_code, error_message=message)


@dataclass(slots=True)
class OffsetCommitPartition:
    partition: int
    offset: int
    metadata: str = ""


@dataclass(slots=True)
class OffsetCommitTopic:
    topic: str
    partitions: list[OffsetCommitPartition]


@dataclass(slots=True, kw_only=True)
class OffsetCommitRequest(Request):
    """Commit offsets (the next offset to read) for a group. A member passes its member_id and
    generation; a consumer outside the group's membership passes "" and -1 (only accepted
    while the group has no members)."""

    API_KEY: ClassVar[int] = ApiKey.OFFSET_COMMIT
    group_id: str = ""
    member_id: str = ""
    generation: int = -1
    topics: list[OffsetCommitTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [[t.topic, [[p.partition, p.offset, p.metadata] for p in t.partitions]] for t in self.topics]
        return [self.group_id, self.member_id, self.generation, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetCommitRequest:
        group, member, generation, rows = _fields(control, "control", 4)
        path = "topics[].partitions[]."
        topics = [
            OffsetCommitTopic(_str(topic, "topics[].topic"), [
                OffsetCommitPartition(_int(p, path + "partition", _I32), _int(o, path + "offset", _I64),
                                      _str(meta, path + "metadata"))
                for p, o, meta in _rows(partitions, "topics[].partitions", 3)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(group_id=_str(group, "group_id"), member_id=_str(member, "member_id"),
                   generation=_int(generation, "generation", _I32), topics=topics)


@dataclass(slots=True)
class PartitionError:
    partition: int
    error_code: int


@dataclass(slots=True)
class OffsetCommitTopicResult:
    topic: str
    partitions: list[PartitionError]


@dataclass(slots=True, kw_only=True)
class OffsetCommitResponse(Response):
    """A group-level refusal (unknown member, stale generation, not the coordinator) is in
    error_code/error_message; otherwise each partition has its own code."""

    API_KEY: ClassVar[int] = ApiKey.OFFSET_COMMIT
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    topics: list[OffsetCommitTopicResult] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [[t.topic, [[p.partition, p.error_code] for p in t.partitions]] for t in self.topics]
        return [self.error_code, self.error_message, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetCommitResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        path = "topics[].partitions[]."
        topics = [
            OffsetCommitTopicResult(_str(topic, "topics[].topic"), [
                PartitionError(_int(p, path + "partition", _I32), _int(code, path + "error_code", _I16))
                for p, code in _rows(partitions, "topics[].partitions", 2)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(error_code=error_code, error_message=message, topics=topics)


@dataclass(slots=True, kw_only=True)
class OffsetFetchRequest(Request):
    """Committed offsets of a group: of these partitions, or (topics=None) all it has."""

    API_KEY: ClassVar[int] = ApiKey.OFFSET_FETCH
    group_id: str = ""
    topics: list[TopicPartitions] | None = None

    def to_control(self) -> list:
        return [self.group_id, None if self.topics is None else _tps_control(self.topics)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetFetchRequest:
        group, topics = _fields(control, "control", 2)
        return cls(group_id=_str(group, "group_id"), topics=None if topics is None else _tps(topics, "topics"))


@dataclass(slots=True)
class OffsetFetchPartition:
    partition: int
    offset: int  # NO_OFFSET (-1): nothing committed
    metadata: str = ""
    error_code: int = ErrorCode.NONE


@dataclass(slots=True)
class OffsetFetchTopic:
    topic: str
    partitions: list[OffsetFetchPartition]


@dataclass(slots=True, kw_only=True)
class OffsetFetchResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.OFFSET_FETCH
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    topics: list[OffsetFetchTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [[t.topic, [[p.partition, p.offset, p.metadata, p.error_code] for p in t.partitions]]
                  for t in self.topics]
        return [self.error_code, self.error_message, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> OffsetFetchResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        path = "topics[].partitions[]."
        topics = [
            OffsetFetchTopic(_str(topic, "topics[].topic"), [
                OffsetFetchPartition(_int(p, path + "partition", _I32), _int(o, path + "offset", _I64),
                                     _str(meta, path + "metadata"), _int(code, path + "error_code", _I16))
                for p, o, meta, code in _rows(partitions, "topics[].partitions", 4)
            ])
            for topic, partitions in _rows(rows, "topics", 2)
        ]
        return cls(error_code=error_code, error_message=message, topics=topics)


@dataclass(slots=True, kw_only=True)
class ListGroupsRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.LIST_GROUPS

    def to_control(self) -> list:
        return []

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ListGroupsRequest:
        _fields(control, "control", 0)
        return cls()


@dataclass(slots=True)
class ListedGroup:
    group_id: str
    state: str  # Empty (offsets only), Stable, Reconciling
    members: int


@dataclass(slots=True, kw_only=True)
class ListGroupsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.LIST_GROUPS
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    groups: list[ListedGroup] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, [[g.group_id, g.state, g.members] for g in self.groups]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> ListGroupsResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        groups = [ListedGroup(_str(g, "groups[].group_id"), _str(s, "groups[].state"), _int(n, "groups[].members", _I32))
                  for g, s, n in _rows(rows, "groups", 3)]
        return cls(error_code=error_code, error_message=message, groups=groups)


@dataclass(slots=True, kw_only=True)
class DescribeGroupsRequest(Request):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_GROUPS
    group_ids: list[str] = field(default_factory=list)

    def to_control(self) -> list:
        return [list(self.group_ids)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeGroupsRequest:
        (groups,) = _fields(control, "control", 1)
        return cls(group_ids=_str_list(groups, "group_ids"))


@dataclass(slots=True)
class DescribedMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    topics: list[str]
    assignment: list[TopicPartitions]  # what the member holds now (target once it converged)


@dataclass(slots=True)
class DescribedOffset:
    topic: str
    partition: int
    offset: int
    metadata: str = ""


@dataclass(slots=True)
class DescribedGroup:
    group_id: str
    error_code: int
    error_message: str | None
    state: str
    generation: int
    assignor: str
    members: list[DescribedMember]
    offsets: list[DescribedOffset]


def _member_rows(value: Any, path: str) -> list[DescribedMember]:
    return [
        DescribedMember(_str(member, path + "[].member_id"), _opt_str(instance, path + "[].group_instance_id"),
                        _str(client, path + "[].client_id"), _str(host, path + "[].host"),
                        _str_list(topics, path + "[].topics"), _tps(assignment, path + "[].assignment"))
        for member, instance, client, host, topics, assignment in _rows(value, path, 6)
    ]


def _offset_rows(value: Any, path: str) -> list[DescribedOffset]:
    return [
        DescribedOffset(_str(topic, path + "[].topic"), _int(p, path + "[].partition", _I32),
                        _int(o, path + "[].offset", _I64), _str(meta, path + "[].metadata"))
        for topic, p, o, meta in _rows(value, path, 4)
    ]


@dataclass(slots=True, kw_only=True)
class DescribeGroupsResponse(Response):
    API_KEY: ClassVar[int] = ApiKey.DESCRIBE_GROUPS
    groups: list[DescribedGroup] = field(default_factory=list)

    def to_control(self) -> list:
        return [[
            [g.group_id, g.error_code, g.error_message, g.state, g.generation, g.assignor,
             [[m.member_id, m.group_instance_id, m.client_id, m.host, list(m.topics), _tps_control(m.assignment)]
              for m in g.members],
             [[o.topic, o.partition, o.offset, o.metadata] for o in g.offsets]]
            for g in self.groups
        ]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeGroupsResponse:
        (rows,) = _fields(control, "control", 1)
        groups = [
            DescribedGroup(_str(group, "groups[].group_id"), _int(code, "groups[].error_code", _I16),
                           _opt_str(message, "groups[].error_message"), _str(state, "groups[].state"),
                           _int(generation, "groups[].generation", _I32), _str(assignor, "groups[].assignor"),
                           _member_rows(members, "groups[].members"), _offset_rows(offsets, "groups[].offsets"))
            for group, code, message, state, generation, assignor, members, offsets in _rows(rows, "groups", 8)
        ]
        return cls(groups=groups)


register_api(FindCoordinatorRequest, FindCoordinatorResponse)
register_api(JoinGroupRequest, JoinGroupResponse)
register_api(SyncGroupRequest, SyncGroupResponse)
register_api(HeartbeatRequest, HeartbeatResponse)
register_api(LeaveGroupRequest, LeaveGroupResponse)
register_api(OffsetCommitRequest, OffsetCommitResponse)
register_api(OffsetFetchRequest, OffsetFetchResponse)
register_api(ListGroupsRequest, ListGroupsResponse)
register_api(DescribeGroupsRequest, DescribeGroupsResponse)


# --- Security: SaslHandshake, SaslAuthenticate, user SCRAM credentials, ACLs ----------------------
# Kafka's numbers for the same APIs. Their names live in SecurityApiKey (the ApiKey table above
# is left as it is); api_name() still prints them as "api key 17" etc. The SCRAM exchange itself
# is client/protocol/scram.py; which strings an ACL field may hold is the broker's to check.


class SecurityApiKey(enum.IntEnum):
    SASL_HANDSHAKE = 17
    DESCRIBE_ACLS = 29
    CREATE_ACLS = 30
    DELETE_ACLS = 31
    SASL_AUTHENTICATE = 36
    DESCRIBE_USER_SCRAM_CREDENTIALS = 50
    ALTER_USER_SCRAM_CREDENTIALS = 51


def _bin(value: Any, path: str) -> bytes:
    if type(value) is not bytes:
        raise _Malformed(f"{path} must be bytes, got {_describe(value)}")
    return value


class _SecurityMessage:
    """from_control naming the API from SecurityApiKey (ApiKey does not list these keys)."""

    __slots__ = ()

    @classmethod
    def from_control(cls, control: Any, payload: Any = b""):
        reader = _PayloadReader(_as_byte_view(payload))
        try:
            message = cls._from_control(control, reader)
            reader.finish()
        except _Malformed as exc:
            kind = "request" if cls.IS_REQUEST else "response"
            error = InvalidRequestError if cls.IS_REQUEST else InvalidResponseError
            raise error(f"{SecurityApiKey(cls.API_KEY).name} {kind}: {exc}") from None
        return message


@dataclass(slots=True, kw_only=True)
class SaslHandshakeRequest(_SecurityMessage, Request):
    """Pick the SASL mechanism for this connection (only SCRAM-SHA-256 today)."""

    API_KEY: ClassVar[int] = SecurityApiKey.SASL_HANDSHAKE
    mechanism: str = "SCRAM-SHA-256"

    def to_control(self) -> list:
        return [self.mechanism]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SaslHandshakeRequest:
        (mechanism,) = _fields(control, "control", 1)
        return cls(mechanism=_str(mechanism, "mechanism"))


@dataclass(slots=True, kw_only=True)
class SaslHandshakeResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.SASL_HANDSHAKE
    error_code: int = ErrorCode.NONE
    mechanisms: list[str] = field(default_factory=list)  # what the broker offers

    def to_control(self) -> list:
        return [self.error_code, self.mechanisms]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SaslHandshakeResponse:
        error_code, mechanisms = _fields(control, "control", 2)
        return cls(error_code=_int(error_code, "error_code", _I16), mechanisms=_str_list(mechanisms, "mechanisms"))


@dataclass(slots=True, kw_only=True)
class SaslAuthenticateRequest(_SecurityMessage, Request):
    """One message of the mechanism's exchange (SCRAM: client-first, then client-final)."""

    API_KEY: ClassVar[int] = SecurityApiKey.SASL_AUTHENTICATE
    auth_bytes: bytes = b""

    def to_control(self) -> list:
        return [self.auth_bytes]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SaslAuthenticateRequest:
        (auth_bytes,) = _fields(control, "control", 1)
        return cls(auth_bytes=_bin(auth_bytes, "auth_bytes"))


@dataclass(slots=True, kw_only=True)
class SaslAuthenticateResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.SASL_AUTHENTICATE
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    auth_bytes: bytes = b""
    session_lifetime_ms: int = 0  # 0: the session lasts as long as the connection

    def to_control(self) -> list:
        return [self.error_code, self.error_message, self.auth_bytes, self.session_lifetime_ms]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> SaslAuthenticateResponse:
        error_code, message, (auth_bytes, lifetime) = _error_fields(control, 4)
        return cls(error_code=error_code, error_message=message, auth_bytes=_bin(auth_bytes, "auth_bytes"),
                   session_lifetime_ms=_int(lifetime, "session_lifetime_ms", _I64))


@dataclass(slots=True)
class ScramCredentialInfo:
    user: str
    mechanism: str
    iterations: int


@dataclass(slots=True, kw_only=True)
class DescribeUserScramCredentialsRequest(_SecurityMessage, Request):
    """The SCRAM users the cluster knows (users=None: all of them). Never returns keys."""

    API_KEY: ClassVar[int] = SecurityApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS
    users: list[str] | None = None

    def to_control(self) -> list:
        return [self.users]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeUserScramCredentialsRequest:
        (users,) = _fields(control, "control", 1)
        return cls(users=None if users is None else _str_list(users, "users"))


@dataclass(slots=True, kw_only=True)
class DescribeUserScramCredentialsResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    users: list[ScramCredentialInfo] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, [[u.user, u.mechanism, u.iterations] for u in self.users]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeUserScramCredentialsResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        users = [ScramCredentialInfo(_str(user, "users[].user"), _str(mechanism, "users[].mechanism"),
                                     _int(iterations, "users[].iterations", _I32))
                 for user, mechanism, iterations in _rows(rows, "users", 3)]
        return cls(error_code=error_code, error_message=message, users=users)


@dataclass(slots=True)
class ScramUpsertion:
    """A user's new credential, computed by the client: the password itself never leaves it."""

    user: str
    mechanism: str
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


@dataclass(slots=True)
class ScramDeletion:
    user: str
    mechanism: str


@dataclass(slots=True)
class UserResult:
    user: str
    error_code: int
    error_message: str | None


@dataclass(slots=True, kw_only=True)
class AlterUserScramCredentialsRequest(_SecurityMessage, Request):
    API_KEY: ClassVar[int] = SecurityApiKey.ALTER_USER_SCRAM_CREDENTIALS
    upsertions: list[ScramUpsertion] = field(default_factory=list)
    deletions: list[ScramDeletion] = field(default_factory=list)

    def to_control(self) -> list:
        return [[[u.user, u.mechanism, u.iterations, u.salt, u.stored_key, u.server_key] for u in self.upsertions],
                [[d.user, d.mechanism] for d in self.deletions]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterUserScramCredentialsRequest:
        upsertions, deletions = _fields(control, "control", 2)
        return cls(
            upsertions=[ScramUpsertion(_str(user, "upsertions[].user"), _str(mechanism, "upsertions[].mechanism"),
                                       _int(iterations, "upsertions[].iterations", _I32),
                                       _bin(salt, "upsertions[].salt"), _bin(stored, "upsertions[].stored_key"),
                                       _bin(server, "upsertions[].server_key"))
                        for user, mechanism, iterations, salt, stored, server in _rows(upsertions, "upsertions", 6)],
            deletions=[ScramDeletion(_str(user, "deletions[].user"), _str(mechanism, "deletions[].mechanism"))
                       for user, mechanism in _rows(deletions, "deletions", 2)],
        )


@dataclass(slots=True, kw_only=True)
class AlterUserScramCredentialsResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.ALTER_USER_SCRAM_CREDENTIALS
    results: list[UserResult] = field(default_factory=list)

    def to_control(self) -> list:
        return [[[r.user, r.error_code, r.error_message] for r in self.results]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AlterUserScramCredentialsResponse:
        (rows,) = _fields(control, "control", 1)
        return cls(results=[UserResult(_str(user, "results[].user"), _int(code, "results[].error_code", _I16),
                                       _opt_str(message, "results[].error_message"))
                            for user, code, message in _rows(rows, "results", 3)])


@dataclass(slots=True)
class AclBinding:
    """One rule. Strings, checked by the broker: principal "User:alice" (or "User:*"),
    resource_type topic|group|cluster, pattern_type literal|prefixed, operation
    read|write|create|delete|describe|alter|all, permission allow|deny, host "*" (any)."""

    principal: str
    resource_type: str
    resource_name: str
    pattern_type: str
    operation: str
    permission: str
    host: str = "*"

    def to_row(self) -> list:
        return [self.principal, self.resource_type, self.resource_name, self.pattern_type, self.operation,
                self.permission, self.host]

    @classmethod
    def from_row(cls, row: Sequence[Any], path: str) -> AclBinding:
        return cls(*(_str(value, f"{path}.{name}") for value, name in zip(row, _ACL_FIELDS)))


@dataclass(slots=True)
class AclFilter:
    """Matches bindings; a None field matches anything."""

    principal: str | None = None
    resource_type: str | None = None
    resource_name: str | None = None
    pattern_type: str | None = None
    operation: str | None = None
    permission: str | None = None
    host: str | None = None

    def to_row(self) -> list:
        return [self.principal, self.resource_type, self.resource_name, self.pattern_type, self.operation,
                self.permission, self.host]

    @classmethod
    def from_row(cls, row: Sequence[Any], path: str) -> AclFilter:
        return cls(*(_opt_str(value, f"{path}.{name}") for value, name in zip(row, _ACL_FIELDS)))


_ACL_FIELDS = ("principal", "resource_type", "resource_name", "pattern_type", "operation", "permission", "host")


def _acl_rows(value: Any, path: str) -> list[AclBinding]:
    row_path = path + "[]"
    return [AclBinding.from_row(row, row_path) for row in _rows(value, path, len(_ACL_FIELDS))]


@dataclass(slots=True)
class AclResult:
    error_code: int
    error_message: str | None


@dataclass(slots=True)
class AclDeleteResult:
    error_code: int
    error_message: str | None
    deleted: list[AclBinding]


@dataclass(slots=True, kw_only=True)
class DescribeAclsRequest(_SecurityMessage, Request):
    API_KEY: ClassVar[int] = SecurityApiKey.DESCRIBE_ACLS
    filter: AclFilter = field(default_factory=AclFilter)

    def to_control(self) -> list:
        return [self.filter.to_row()]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeAclsRequest:
        (row,) = _fields(control, "control", 1)
        return cls(filter=AclFilter.from_row(_fields(row, "filter", len(_ACL_FIELDS)), "filter"))


@dataclass(slots=True, kw_only=True)
class DescribeAclsResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.DESCRIBE_ACLS
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    acls: list[AclBinding] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, [a.to_row() for a in self.acls]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DescribeAclsResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        return cls(error_code=error_code, error_message=message, acls=_acl_rows(rows, "acls"))


@dataclass(slots=True, kw_only=True)
class CreateAclsRequest(_SecurityMessage, Request):
    API_KEY: ClassVar[int] = SecurityApiKey.CREATE_ACLS
    acls: list[AclBinding] = field(default_factory=list)

    def to_control(self) -> list:
        return [[a.to_row() for a in self.acls]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> CreateAclsRequest:
        (rows,) = _fields(control, "control", 1)
        return cls(acls=_acl_rows(rows, "acls"))


@dataclass(slots=True, kw_only=True)
class CreateAclsResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.CREATE_ACLS
    results: list[AclResult] = field(default_factory=list)  # one per binding, in request order

    def to_control(self) -> list:
        return [[[r.error_code, r.error_message] for r in self.results]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> CreateAclsResponse:
        (rows,) = _fields(control, "control", 1)
        return cls(results=[AclResult(_int(code, "results[].error_code", _I16), _opt_str(message, "results[].error_message"))
                            for code, message in _rows(rows, "results", 2)])


@dataclass(slots=True, kw_only=True)
class DeleteAclsRequest(_SecurityMessage, Request):
    API_KEY: ClassVar[int] = SecurityApiKey.DELETE_ACLS
    filters: list[AclFilter] = field(default_factory=list)

    def to_control(self) -> list:
        return [[f.to_row() for f in self.filters]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DeleteAclsRequest:
        (rows,) = _fields(control, "control", 1)
        return cls(filters=[AclFilter.from_row(row, "filters[]") for row in _rows(rows, "filters", len(_ACL_FIELDS))])


@dataclass(slots=True, kw_only=True)
class DeleteAclsResponse(_SecurityMessage, Response):
    API_KEY: ClassVar[int] = SecurityApiKey.DELETE_ACLS
    results: list[AclDeleteResult] = field(default_factory=list)  # one per filter, in request order

    def to_control(self) -> list:
        return [[[r.error_code, r.error_message, [a.to_row() for a in r.deleted]] for r in self.results]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> DeleteAclsResponse:
        (rows,) = _fields(control, "control", 1)
        return cls(results=[AclDeleteResult(_int(code, "results[].error_code", _I16),
                                            _opt_str(message, "results[].error_message"),
                                            _acl_rows(deleted, "results[].deleted"))
                            for code, message, deleted in _rows(rows, "results", 3)])


register_api(SaslHandshakeRequest, SaslHandshakeResponse)
register_api(SaslAuthenticateRequest, SaslAuthenticateResponse)
register_api(DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse)
register_api(AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse)
register_api(DescribeAclsRequest, DescribeAclsResponse)
register_api(CreateAclsRequest, CreateAclsResponse)
register_api(DeleteAclsRequest, DeleteAclsResponse)


# --- Transactions: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, WriteTxnMarkers, TxnOffsetCommit -
# Kafka's API keys and error codes, tidelog's own shapes. The first four requests go from a
# transactional producer to the transaction coordinator (the active controller,
# broker/txn_coordinator.py); WriteTxnMarkers goes from the coordinator to partition leaders.
# Every request names the producer id and epoch it acts for, so a fenced producer is refused.


@dataclass(slots=True)
class TxnPartitionsResult:
    """Per-partition outcome of a transactional request for one topic."""

    topic: str
    partitions: list[PartitionError]


def _txn_results_control(rows: list[TxnPartitionsResult]) -> list:
    return [[t.topic, [[p.partition, p.error_code] for p in t.partitions]] for t in rows]


def _txn_results(value: Any, path: str) -> list[TxnPartitionsResult]:
    part_path = path + "[].partitions[]."
    return [
        TxnPartitionsResult(_str(topic, path + "[].topic"), [
            PartitionError(_int(p, part_path + "partition", _I32), _int(code, part_path + "error_code", _I16))
            for p, code in _rows(partitions, path + "[].partitions", 2)
        ])
        for topic, partitions in _rows(value, path, 2)
    ]


def _txn_identity(row: list | tuple) -> tuple[str, int, int]:
    """(transactional_id, producer_id, producer_epoch) from the first three control fields."""
    return (_str(row[0], "transactional_id"), _int(row[1], "producer_id", _I64), _int(row[2], "producer_epoch", _I16))


@dataclass(slots=True, kw_only=True)
class AddPartitionsToTxnRequest(Request):
    """Add partitions to the producer's transaction before it writes to them (the coordinator
    must know every partition it will send markers to).

    Control: [transactional_id, producer_id, producer_epoch, [[topic, [partition, ...]], ...]]."""

    API_KEY: ClassVar[int] = ApiKey.ADD_PARTITIONS_TO_TXN
    transactional_id: str = ""
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    topics: list[TopicPartitions] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.transactional_id, self.producer_id, self.producer_epoch, _tps_control(self.topics)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AddPartitionsToTxnRequest:
        row = _fields(control, "control", 4)
        tid, producer_id, epoch = _txn_identity(row)
        return cls(transactional_id=tid, producer_id=producer_id, producer_epoch=epoch, topics=_tps(row[3], "topics"))


@dataclass(slots=True, kw_only=True)
class AddPartitionsToTxnResponse(Response):
    """A refusal of the whole request (fenced, wrong state, not the coordinator) is in
    error_code/error_message; otherwise each partition has its own code.

    Control: [error_code, error_message, [[topic, [[partition, error_code], ...]], ...]]."""

    API_KEY: ClassVar[int] = ApiKey.ADD_PARTITIONS_TO_TXN
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    topics: list[TxnPartitionsResult] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, _txn_results_control(self.topics)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AddPartitionsToTxnResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        return cls(error_code=error_code, error_message=message, topics=_txn_results(rows, "topics"))


@dataclass(slots=True, kw_only=True)
class AddOffsetsToTxnRequest(Request):
    """Say that the transaction will commit offsets of `group_id` (TxnOffsetCommit follows).

    Control: [transactional_id, producer_id, producer_epoch, group_id]."""

    API_KEY: ClassVar[int] = ApiKey.ADD_OFFSETS_TO_TXN
    transactional_id: str = ""
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    group_id: str = ""

    def to_control(self) -> list:
        return [self.transactional_id, self.producer_id, self.producer_epoch, self.group_id]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> AddOffsetsToTxnRequest:
        row = _fields(control, "control", 4)
        tid, producer_id, epoch = _txn_identity(row)
        return cls(transactional_id=tid, producer_id=producer_id, producer_epoch=epoch,
                   group_id=_str(row[3], "group_id"))


@dataclass(slots=True, kw_only=True)
class TxnErrorResponse(Response):
    """Control: [error_code, error_message]. Base of the answers that carry nothing else."""

    error_code: int = ErrorCode.NONE
    error_message: str | None = None

    def to_control(self) -> list:
        return [self.error_code, self.error_message]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader):
        error_code, message, _ = _error_fields(control, 2)
        return cls(error_code=error_code, error_message=message)


@dataclass(slots=True, kw_only=True)
class AddOffsetsToTxnResponse(TxnErrorResponse):
    API_KEY: ClassVar[int] = ApiKey.ADD_OFFSETS_TO_TXN


@dataclass(slots=True, kw_only=True)
class EndTxnRequest(Request):
    """Commit (committed=True) or abort the producer's transaction. Answered once the decision
    is durable and every partition holds its marker (the transaction is complete).

    Control: [transactional_id, producer_id, producer_epoch, committed]."""

    API_KEY: ClassVar[int] = ApiKey.END_TXN
    transactional_id: str = ""
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    committed: bool = True

    def to_control(self) -> list:
        return [self.transactional_id, self.producer_id, self.producer_epoch, self.committed]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> EndTxnRequest:
        row = _fields(control, "control", 4)
        tid, producer_id, epoch = _txn_identity(row)
        return cls(transactional_id=tid, producer_id=producer_id, producer_epoch=epoch,
                   committed=_bool(row[3], "committed"))


@dataclass(slots=True, kw_only=True)
class EndTxnResponse(TxnErrorResponse):
    API_KEY: ClassVar[int] = ApiKey.END_TXN


@dataclass(slots=True)
class TxnMarker:
    """One producer's commit or abort marker for these partitions."""

    producer_id: int
    producer_epoch: int
    committed: bool
    topics: list[TopicPartitions]


@dataclass(slots=True, kw_only=True)
class WriteTxnMarkersRequest(Request):
    """Coordinator to partition leader: append a control batch ending the producer's transaction
    in each partition; coordinator_epoch is the controller's Raft term (a deposed coordinator's
    markers are refused).

    Control: [coordinator_epoch, [[producer_id, producer_epoch, committed, [[topic, [partition, ...]]]], ...]]."""

    API_KEY: ClassVar[int] = ApiKey.WRITE_TXN_MARKERS
    coordinator_epoch: int = 0
    markers: list[TxnMarker] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.coordinator_epoch,
                [[mk.producer_id, mk.producer_epoch, mk.committed, _tps_control(mk.topics)] for mk in self.markers]]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> WriteTxnMarkersRequest:
        epoch, rows = _fields(control, "control", 2)
        markers = [
            TxnMarker(_int(pid, "markers[].producer_id", _I64), _int(pepoch, "markers[].producer_epoch", _I16),
                      _bool(committed, "markers[].committed"), _tps(topics, "markers[].topics"))
            for pid, pepoch, committed, topics in _rows(rows, "markers", 4)
        ]
        return cls(coordinator_epoch=_int(epoch, "coordinator_epoch", _I32), markers=markers)


@dataclass(slots=True)
class TxnMarkerResult:
    producer_id: int
    topics: list[TxnPartitionsResult]


@dataclass(slots=True, kw_only=True)
class WriteTxnMarkersResponse(Response):
    """Control: [[producer_id, [[topic, [[partition, error_code], ...]], ...]], ...]."""

    API_KEY: ClassVar[int] = ApiKey.WRITE_TXN_MARKERS
    markers: list[TxnMarkerResult] = field(default_factory=list)

    def to_control(self) -> list:
        return [[mk.producer_id, _txn_results_control(mk.topics)] for mk in self.markers]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> WriteTxnMarkersResponse:
        return cls(markers=[
            TxnMarkerResult(_int(pid, "markers[].producer_id", _I64), _txn_results(topics, "markers[].topics"))
            for pid, topics in _rows(control, "markers", 2)
        ])


@dataclass(slots=True, kw_only=True)
class TxnOffsetCommitRequest(Request):
    """Offsets of `group_id` to commit with the transaction (only if it commits). member_id and
    generation are the consumer's, checked like an OffsetCommit's ("" and -1: a consumer
    outside the group's membership, accepted only while the group has no members).

    Control: [transactional_id, producer_id, producer_epoch, group_id, member_id, generation,
              [[topic, [[partition, offset, metadata], ...]], ...]]."""

    API_KEY: ClassVar[int] = ApiKey.TXN_OFFSET_COMMIT
    transactional_id: str = ""
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    group_id: str = ""
    member_id: str = ""
    generation: int = -1
    topics: list[OffsetCommitTopic] = field(default_factory=list)

    def to_control(self) -> list:
        topics = [[t.topic, [[p.partition, p.offset, p.metadata] for p in t.partitions]] for t in self.topics]
        return [self.transactional_id, self.producer_id, self.producer_epoch, self.group_id, self.member_id,
                self.generation, topics]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> TxnOffsetCommitRequest:
        row = _fields(control, "control", 7)
        tid, producer_id, epoch = _txn_identity(row)
        path = "topics[].partitions[]."
        topics = [
            OffsetCommitTopic(_str(topic, "topics[].topic"), [
                OffsetCommitPartition(_int(p, path + "partition", _I32), _int(o, path + "offset", _I64),
                                      _str(meta, path + "metadata"))
                for p, o, meta in _rows(partitions, "topics[].partitions", 3)
            ])
            for topic, partitions in _rows(row[6], "topics", 2)
        ]
        return cls(transactional_id=tid, producer_id=producer_id, producer_epoch=epoch,
                   group_id=_str(row[3], "group_id"), member_id=_str(row[4], "member_id"),
                   generation=_int(row[5], "generation", _I32), topics=topics)


@dataclass(slots=True, kw_only=True)
class TxnOffsetCommitResponse(Response):
    """Control: [error_code, error_message, [[topic, [[partition, error_code], ...]], ...]]."""

    API_KEY: ClassVar[int] = ApiKey.TXN_OFFSET_COMMIT
    error_code: int = ErrorCode.NONE
    error_message: str | None = None
    topics: list[TxnPartitionsResult] = field(default_factory=list)

    def to_control(self) -> list:
        return [self.error_code, self.error_message, _txn_results_control(self.topics)]

    @classmethod
    def _from_control(cls, control: Any, payload: _PayloadReader) -> TxnOffsetCommitResponse:
        error_code, message, (rows,) = _error_fields(control, 3)
        return cls(error_code=error_code, error_message=message, topics=_txn_results(rows, "topics"))


register_api(AddPartitionsToTxnRequest, AddPartitionsToTxnResponse)
register_api(AddOffsetsToTxnRequest, AddOffsetsToTxnResponse)
register_api(EndTxnRequest, EndTxnResponse)
register_api(WriteTxnMarkersRequest, WriteTxnMarkersResponse)
register_api(TxnOffsetCommitRequest, TxnOffsetCommitResponse)
