"""Raft tuning knobs and limits, each with the reason for its default.

Time in the Raft core is counted in ticks: the driver calls `RaftNode.tick()` on a fixed
interval (`raft_tick_ms`, 50 ms by default), so `election_ticks=10` means about half a second.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


class RaftConfigError(ValueError):
    """A RaftConfig value is out of range; the message names the setting."""


@dataclass(frozen=True)
class RaftConfig:
    # Followers wait [election_ticks, 2 * election_ticks) ticks without hearing from a leader
    # before campaigning; the spread makes split votes unlikely.
    election_ticks: int = 10
    # A leader heartbeats every heartbeat_ticks; must be well below election_ticks or followers
    # campaign against a healthy leader.
    heartbeat_ticks: int = 1
    # One AppendEntries carries at most this many entries / bytes of entry data (at least one
    # entry is always sent so a single huge entry still makes progress).
    max_entries_per_append: int = 512
    max_append_bytes: int = 1 << 20
    # Appends sent to a peer in replicate mode but not yet acknowledged; bounds the memory and
    # socket buffer a slow follower can tie up on the leader.
    max_inflight_appends: int = 64
    # Proposal bytes appended by this leader but not yet committed; beyond this, propose()
    # raises ProposalDropped so a leader cut off from its quorum cannot grow its log unboundedly.
    max_uncommitted_bytes: int = 64 << 20
    # Committed entry bytes handed to the application in one Ready (at least one entry).
    max_apply_bytes_per_ready: int = 4 << 20
    # ReadIndex requests waiting for their quorum round; more raise ProposalDropped.
    max_pending_reads: int = 4096
    # A node first asks "would you vote for me?" without bumping its term, so a node coming
    # back from a partition cannot force the healthy majority into a new term.
    pre_vote: bool = True
    # A leader that has not heard from a majority within election_ticks steps down, and
    # followers that heard from a leader within election_ticks ignore vote requests.
    check_quorum: bool = True

    def validate(self) -> RaftConfig:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (type(value) is not int or value < 1):
                raise RaftConfigError(f"raft {f.name} must be a positive integer, got {value!r}")
        if self.heartbeat_ticks >= self.election_ticks:
            raise RaftConfigError(
                f"raft heartbeat_ticks ({self.heartbeat_ticks}) must be below election_ticks "
                f"({self.election_ticks}) or followers campaign against a live leader")
        return self
