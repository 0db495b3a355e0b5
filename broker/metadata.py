"""Cluster metadata: the records of the metadata log and the in-memory image they build.

Every change to cluster metadata is a *record* (a small msgpack-able list). Records are
committed through the Raft log of the controller quorum (broker/controller.py) and applied,
in log order, to a `MetadataImage` on every broker, voter or observer; request handlers read
the image. Two brokers that applied the same prefix of the log hold the same image.

Record shapes (field order fixed; new fields are only ever appended at the end, and readers
accept records without them):
    ["cluster", cluster_id]                                         the cluster's id (first leader)
    ["broker", node_id, host, port, incarnation]                    broker registered (and live)
    ["fence", node_id, fenced: bool]                                broker fenced / unfenced
    ["topic", name, topic_id, partitions, replication_factor, configs, assignment]
          assignment: [[replica node ids] per partition]; leaders start at replicas[0], epoch 0,
          ISR = replicas
    ["delete_topic", name]
    ["partition", name, partition, leader, leader_epoch, isr, replicas?]   leader/ISR change
          (replicas: optional; absent = unchanged)
    ["offset_commit", group, topic, partition, offset, metadata]    a group's committed offset
          (the shape only: consumer groups land later)
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import msgpack

NO_LEADER = -1
SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class PartitionState:
    topic: str
    partition: int
    replicas: list[int]
    leader: int
    leader_epoch: int
    isr: list[int]


@dataclass(slots=True)
class TopicState:
    name: str
    topic_id: str
    replication_factor: int
    configs: dict[str, str]
    partitions: list[PartitionState] = field(default_factory=list)


@dataclass(slots=True)
class BrokerState:
    node_id: int
    host: str
    port: int
    incarnation: str
    fenced: bool = False


@dataclass(slots=True)
class CommittedOffset:
    offset: int
    metadata: str = ""


class MetadataImage:
    """The state every broker serves Metadata/DescribeTopic/DescribeCluster from.

    Only `apply` (and `from_snapshot`) change it, only with committed records in log order.
    `controller_id` is not from records: the broker sets it to the Raft leader it knows of."""

    def __init__(self, cluster_id: str = ""):
        self.cluster_id = cluster_id
        self.controller_id = NO_LEADER
        self.brokers: dict[int, BrokerState] = {}
        self.topics: dict[str, TopicState] = {}
        self.offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        self.applied_records = 0

    def apply(self, record: list) -> None:
        kind = record[0]
        if kind == "broker":
            _, node_id, host, port, incarnation = record[:5]
            self.brokers[node_id] = BrokerState(node_id, host, port, incarnation)
        elif kind == "fence":
            _, node_id, fenced = record[:3]
            if node_id in self.brokers:
                self.brokers[node_id].fenced = fenced
        elif kind == "topic":
            _, name, topic_id, count, factor, configs, assignment = record[:7]
            partitions = [
                PartitionState(name, index, list(replicas), replicas[0], 0, list(replicas))
                for index, replicas in enumerate(assignment[:count])
            ]
            self.topics[name] = TopicState(name, topic_id, factor, dict(configs), partitions)
        elif kind == "delete_topic":
            self.topics.pop(record[1], None)
        elif kind == "partition":
            _, name, index, leader, leader_epoch, isr = record[:6]
            topic = self.topics.get(name)
            if topic is not None and index < len(topic.partitions):
                state = topic.partitions[index]
                state.leader, state.leader_epoch, state.isr = leader, leader_epoch, list(isr)
                if len(record) > 6 and record[6] is not None:
                    state.replicas = list(record[6])
        elif kind == "cluster":
            self.cluster_id = record[1]
        elif kind == "offset_commit":
            _, group, topic, partition, offset, metadata = record[:6]
            self.offsets.setdefault(group, {})[(topic, partition)] = CommittedOffset(offset, metadata)
        else:
            raise ValueError(f"unknown metadata record kind {kind!r}")
        self.applied_records += 1

    def partition(self, topic: str, partition: int) -> PartitionState | None:
        state = self.topics.get(topic)
        if state is None or not 0 <= partition < len(state.partitions):
            return None
        return state.partitions[partition]

    def live_brokers(self) -> list[BrokerState]:
        return [b for b in sorted(self.brokers.values(), key=lambda b: b.node_id) if not b.fenced]

    # --- snapshots ----------------------------------------------------------------------------

    def to_snapshot(self) -> bytes:
        """The whole image as msgpack (what a Raft snapshot of the metadata log holds)."""
        return msgpack.packb({
            "version": SNAPSHOT_VERSION,
            "cluster_id": self.cluster_id,
            "applied_records": self.applied_records,
            "brokers": [[b.node_id, b.host, b.port, b.incarnation, b.fenced]
                        for b in sorted(self.brokers.values(), key=lambda b: b.node_id)],
            "topics": [
                [t.name, t.topic_id, t.replication_factor, t.configs,
                 [[p.partition, p.replicas, p.leader, p.leader_epoch, p.isr] for p in t.partitions]]
                for t in self.topics.values()
            ],
            "offsets": [[group, topic, partition, o.offset, o.metadata]
                        for group, by_partition in self.offsets.items()
                        for (topic, partition), o in by_partition.items()],
        }, use_bin_type=True)

    @classmethod
    def from_snapshot(cls, data: bytes) -> MetadataImage:
        snap: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"metadata snapshot version {snap.get('version')!r} is not {SNAPSHOT_VERSION}")
        image = cls(snap["cluster_id"])
        image.applied_records = snap["applied_records"]
        for node_id, host, port, incarnation, fenced in snap["brokers"]:
            image.brokers[node_id] = BrokerState(node_id, host, port, incarnation, fenced)
        for name, topic_id, factor, configs, partitions in snap["topics"]:
            image.topics[name] = TopicState(name, topic_id, factor, dict(configs), [
                PartitionState(name, index, list(replicas), leader, epoch, list(isr))
                for index, replicas, leader, epoch, isr in partitions
            ])
        for group, topic, partition, offset, metadata in snap["offsets"]:
            image.offsets.setdefault(group, {})[(topic, partition)] = CommittedOffset(offset, metadata)
        return image


def assign_replicas(brokers: list[int], partitions: int, replication_factor: int, start: int = 0) -> list[list[int]]:
    """Spread replicas round-robin so leaders (replicas[0]) and followers land evenly on brokers."""
    ordered = sorted(brokers)
    count = len(ordered)
    if replication_factor > count:
        raise ValueError(f"replication factor {replication_factor} exceeds the {count} live brokers")
    return [
        [ordered[(start + p + r) % count] for r in range(replication_factor)]
        for p in range(partitions)
    ]


def new_topic_id() -> str:
    return uuid.uuid4().hex


# --- legacy: the single-node record log the Raft quorum replaced ------------------------------
# Nothing in the broker uses these any more (broker/controller.py and broker/raft/ do their job);
# they stay, unchanged, while tests/fuzz/ still exercises them, and go when those tests move to
# broker/raft/persist.py's RaftStorage.

_FRAME = struct.Struct(">II")  # length of the msgpack record, CRC-32C of it


class LocalMetadataLog:
    """The single-node metadata log: length + CRC framed msgpack records in one file.

    Each append is fsynced before the change is acknowledged, so a topic the client was told
    exists still exists after a power loss. A torn or corrupt tail (a crash mid-append) is cut
    at start-up: the record it held was never acknowledged."""

    FILE_NAME = "metadata.log"

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.FILE_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def replay(self) -> list[list]:
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        records: list[list] = []
        position = 0
        while position + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, position)
            body = data[position + _FRAME.size : position + _FRAME.size + length]
            if len(body) != length or crc32c.crc32c(body) != crc:
                break
            records.append(msgpack.unpackb(body, raw=False))
            position += _FRAME.size + length
        if position != len(data):
            os.ftruncate(self._fd, position)  # the torn tail was never acknowledged
            os.fsync(self._fd)
        return records

    def append(self, records: list[list]) -> None:
        chunks = []
        for record in records:
            body = msgpack.packb(record, use_bin_type=True)
            chunks.append(_FRAME.pack(len(body), crc32c.crc32c(body)) + body)
        os.write(self._fd, b"".join(chunks))
        os.fsync(self._fd)  # durable before the caller acknowledges the change

    def close(self) -> None:
        os.close(self._fd)


class LocalController:
    """Single-node controller: validates a change, logs its records durably, applies them.

    The Raft controller offers the same methods; only where records are logged differs."""

    def __init__(self, directory: Path, node_id: int):
        self.node_id = node_id
        self.log = LocalMetadataLog(directory)
        self.image = MetadataImage()
        for record in self.log.replay():
            self.image.apply(record)
        cluster_file = directory / "cluster_id"
        if not cluster_file.exists():
            cluster_file.write_text(new_topic_id())
        self.image.cluster_id = cluster_file.read_text().strip()
        self.image.controller_id = node_id

    def commit(self, records: list[list]) -> None:
        self.log.append(records)
        for record in records:
            self.image.apply(record)

    def register_broker(self, host: str, port: int) -> None:
        self.commit([["broker", self.node_id, host, port, new_topic_id()]])

    def close(self) -> None:
        self.log.close()
