"""Public value types of the SDK, shaped like aiokafka's so Kafka users recognise them.

All are plain immutable values: safe to hash, compare, log and pass between threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence


class TopicPartition(NamedTuple):
    """A partition of a topic; a tuple, so it is cheap to hash and to use as a dict key."""

    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    """Where the broker stored a produced record. `offset` is -1 with acks=0 (no answer)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch, as the producer stamped it

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class Record(NamedTuple):
    """One consumed record (aiokafka's ConsumerRecord with the fields tidelog has)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch
    key: object
    value: object
    headers: Sequence  # (name: str, value: bytes | None) pairs; the shared empty tuple when there are none

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class PartitionDescription:
    partition: int
    leader: int  # node id, -1 when the partition has no leader
    leader_epoch: int
    replicas: list[int] = field(default_factory=list)
    isr: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    partitions: list[PartitionDescription] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BrokerDescription:
    node_id: int
    host: str
    port: int
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    controller_id: int  # -1 when no controller is known
    brokers: list[BrokerDescription] = field(default_factory=list)
    cluster_id: str | None = None


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    topics: list[str] = field(default_factory=list)
    assignment: list[TopicPartition] = field(default_factory=list)  # what the member holds now


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A consumer group as its coordinator sees it. `lag`: log end offset minus committed offset,
    per partition with a committed offset (measured when describe_group ran)."""

    group_id: str
    state: str  # Empty (committed offsets only), Stable, Reconciling
    generation: int
    assignor: str = ""
    members: list[MemberDescription] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    lag: dict[TopicPartition, int] = field(default_factory=dict)
