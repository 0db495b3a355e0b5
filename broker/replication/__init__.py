"""Partition replication: the leader's view of its followers (pure rules in `leader_state`)."""

from broker.replication.leader_state import (
    Changes, IsrProposal, LeaderPartitionState, Outcome, ReplicaProgress,
)

__all__ = ["Changes", "IsrProposal", "LeaderPartitionState", "Outcome", "ReplicaProgress"]
