"""tidelog's embedded Raft: a pure, I/O-free consensus core (see core.RaftNode)."""

from broker.raft.config import RaftConfig, RaftConfigError
from broker.raft.core import RaftNode, Role
from broker.raft.errors import NotLeader, ProposalDropped, RaftError
from broker.raft.log import StorageStateError
from broker.raft.messages import Entry, EntryKind, Message, WireError, message_from_wire
from broker.raft.state import (
    HardState, PeerStatus, PersistentState, Ready, ReadState, Snapshot, SnapshotMeta, Status,
)

__all__ = [
    "Entry", "EntryKind", "HardState", "Message", "NotLeader", "PeerStatus", "PersistentState",
    "ProposalDropped", "RaftConfig", "RaftConfigError", "RaftError", "RaftNode", "ReadState",
    "Ready", "Role", "Snapshot", "SnapshotMeta", "Status", "StorageStateError", "WireError",
    "message_from_wire",
]
