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
    ["producer_ids", next_id]                                       producer ids below next_id are handed out
    ["topic_config", name, configs]                                 a topic's configs, the full new dict
    ["partition", name, partition, leader, leader_epoch, isr, replicas?, expected_partition_epoch?]
          leader/ISR change (replicas: optional, absent or None = unchanged). Every applied
          change adds 1 to the partition's `partition_epoch` (derived, not stored in the record:
          every broker applies the same log, so every image counts the same). With
          expected_partition_epoch the record is a compare-and-set: it is skipped, on every
          broker alike, unless the partition is still at that epoch. The controller writes every
          change this way, so an ISR change validated against one version can never undo a
          leader election committed just before it (two writes raced in one Raft entry).
    ["offset_commit", group, topic, partition, offset, metadata]    a group's committed offset
          (written by the group coordinator, broker/groups/; offset -1 removes the entry)
    ["delete_group", group]                                         drop every committed offset of a group
    ["scram_user", user, mechanism, iterations, salt, stored_key, server_key]
          a user's SCRAM credential (broker/security/): salted keys only, never a password
    ["delete_scram_user", user, mechanism]
    ["acl", principal, resource_type, resource_name, pattern_type, operation, permission, host]
    ["delete_acl", principal, resource_type, resource_name, pattern_type, operation, permission, host]
    ["txn", transactional_id, producer_id, producer_epoch, state, timeout_ms, partitions, groups, offsets]
          the whole state of one transactional id (broker/txn_coordinator.py): state is one of
          TXN_STATES, partitions [[topic, partition], ...], groups [group, ...], offsets
          [[group, topic, partition, offset, metadata], ...] (committed only with the transaction:
          the coordinator writes them as "offset_commit" records in the PrepareCommit entry)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    partition_epoch: int = 0  # +1 per applied leader/ISR/replicas change (see the module docstring)


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


# Transaction states (broker/txn_coordinator.py): Prepare* is the decision, Complete* once
# every partition holds its marker.
TXN_EMPTY, TXN_ONGOING = "Empty", "Ongoing"
TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT = "PrepareCommit", "PrepareAbort"
TXN_COMPLETE_COMMIT, TXN_COMPLETE_ABORT = "CompleteCommit", "CompleteAbort"
TXN_STATES = (TXN_EMPTY, TXN_ONGOING, TXN_PREPARE_COMMIT, TXN_PREPARE_ABORT, TXN_COMPLETE_COMMIT, TXN_COMPLETE_ABORT)


@dataclass(slots=True)
class TxnState:
    """One transactional id as the metadata log last recorded it."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: str
    timeout_ms: int
    partitions: list[tuple[str, int]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    offsets: list[tuple[str, str, int, int, str]] = field(default_factory=list)  # group, topic, partition, offset, metadata

    def to_record(self) -> list:
        return ["txn", self.transactional_id, self.producer_id, self.producer_epoch, self.state, self.timeout_ms,
                [list(tp) for tp in self.partitions], list(self.groups), [list(o) for o in self.offsets]]

    @classmethod
    def from_fields(cls, fields: list) -> TxnState:
        tid, producer_id, epoch, state, timeout_ms, partitions, groups, offsets = fields[:8]
        return cls(tid, producer_id, epoch, state, timeout_ms, [tuple(tp) for tp in partitions], list(groups),
                   [tuple(o) for o in offsets])


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
        # Security (broker/security/): user -> (mechanism, iterations, salt, stored_key, server_key),
        # and the ACL bindings as 7-tuples; acls_version moves on every ACL change (caches key on it).
        self.scram_users: dict[str, tuple[str, int, bytes, bytes, bytes]] = {}
        self.acls: set[tuple[str, str, str, str, str, str, str]] = set()
        self.acls_version = 0
        self.applied_records = 0
        self.next_producer_id = 0  # the first producer id not handed out yet
        self.transactions: dict[str, TxnState] = {}  # transactional id -> its state (broker/txn_coordinator.py)

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
        elif kind == "topic_config":
            _, name, configs = record[:3]
            topic = self.topics.get(name)
            if topic is not None:
                topic.configs = dict(configs)
        elif kind == "partition":
            _, name, index, leader, leader_epoch, isr = record[:6]
            topic = self.topics.get(name)
            if topic is not None and index < len(topic.partitions):
                state = topic.partitions[index]
                expected = record[7] if len(record) > 7 else None
                if expected is None or expected == state.partition_epoch:
                    state.leader, state.leader_epoch, state.isr = leader, leader_epoch, list(isr)
                    if len(record) > 6 and record[6] is not None:
                        state.replicas = list(record[6])
                    state.partition_epoch += 1
        elif kind == "producer_ids":
            # Ids below it are handed out; it only grows, so a replayed or reordered record
            # can never hand an id out twice.
            self.next_producer_id = max(self.next_producer_id, record[1])
        elif kind == "cluster":
            self.cluster_id = record[1]
        elif kind == "offset_commit":
            _, group, topic, partition, offset, metadata = record[:6]
            if offset < 0:
                self.offsets.get(group, {}).pop((topic, partition), None)
            else:
                self.offsets.setdefault(group, {})[(topic, partition)] = CommittedOffset(offset, metadata)
        elif kind == "delete_group":
            self.offsets.pop(record[1], None)
        elif kind == "txn":
            txn = TxnState.from_fields(record[1:])
            self.transactions[txn.transactional_id] = txn
        elif kind == "scram_user":
            self.scram_users[record[1]] = (record[2], record[3], bytes(record[4]), bytes(record[5]), bytes(record[6]))
        elif kind == "delete_scram_user":
            self.scram_users.pop(record[1], None)
        elif kind == "acl":
            self.acls.add(tuple(record[1:8]))
            self.acls_version += 1
        elif kind == "delete_acl":
            self.acls.discard(tuple(record[1:8]))
            self.acls_version += 1
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
            "next_producer_id": self.next_producer_id,
            "brokers": [[b.node_id, b.host, b.port, b.incarnation, b.fenced]
                        for b in sorted(self.brokers.values(), key=lambda b: b.node_id)],
            "topics": [
                [t.name, t.topic_id, t.replication_factor, t.configs,
                 [[p.partition, p.replicas, p.leader, p.leader_epoch, p.isr, p.partition_epoch]
                  for p in t.partitions]]
                for t in self.topics.values()
            ],
            "offsets": [[group, topic, partition, o.offset, o.metadata]
                        for group, by_partition in self.offsets.items()
                        for (topic, partition), o in by_partition.items()],
            "scram_users": [[user, *credential] for user, credential in sorted(self.scram_users.items())],
            "acls": [list(acl) for acl in sorted(self.acls)],
            "transactions": [txn.to_record()[1:] for txn in self.transactions.values()],
        }, use_bin_type=True)

    @classmethod
    def from_snapshot(cls, data: bytes) -> MetadataImage:
        snap: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"metadata snapshot version {snap.get('version')!r} is not {SNAPSHOT_VERSION}")
        image = cls(snap["cluster_id"])
        image.applied_records = snap["applied_records"]
        image.next_producer_id = snap.get("next_producer_id", 0)
        for node_id, host, port, incarnation, fenced in snap["brokers"]:
            image.brokers[node_id] = BrokerState(node_id, host, port, incarnation, fenced)
        for name, topic_id, factor, configs, partitions in snap["topics"]:
            image.topics[name] = TopicState(name, topic_id, factor, dict(configs), [
                PartitionState(name, row[0], list(row[1]), row[2], row[3], list(row[4]),
                               row[5] if len(row) > 5 else 0)  # snapshots before partition epochs: 0
                for row in partitions
            ])
        for group, topic, partition, offset, metadata in snap["offsets"]:
            image.offsets.setdefault(group, {})[(topic, partition)] = CommittedOffset(offset, metadata)
        for user, mechanism, iterations, salt, stored_key, server_key in snap.get("scram_users", ()):
            image.scram_users[user] = (mechanism, iterations, salt, stored_key, server_key)
        image.acls = {tuple(acl) for acl in snap.get("acls", ())}
        image.acls_version = 1 if image.acls else 0
        for fields in snap.get("transactions", ()):
            txn = TxnState.from_fields(fields)
            image.transactions[txn.transactional_id] = txn
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
