"""Errors the Raft core raises to its caller (the driver), never to peers."""

from __future__ import annotations


class RaftError(Exception):
    """Base of the errors RaftNode raises for a request it cannot take."""


class NotLeader(RaftError):
    """Only the leader takes proposals and reads. `leader_hint` is the node this one last
    heard from as leader in its current term (None if unknown), so the caller can redirect."""

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """A limit (uncommitted bytes, pending reads) refused the request; retry later."""
