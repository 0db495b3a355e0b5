"""Plain data passed between RaftNode and its driver: persisted state in, Ready out, status."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.raft.messages import Entry, Message


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: a node that forgot its vote could vote twice
    in one term, and one that forgot its term could accept a deposed leader."""

    term: int = 0
    voted_for: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The last log entry a snapshot covers."""

    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True)
class PersistentState:
    """Everything a node reloads from its disk on start.

    `entries` are the stored log entries after `snapshot.meta.index` (or from index 1 without a
    snapshot), contiguous; stale ones at or below the snapshot index are ignored. A fresh node
    passes `PersistentState()`.
    """

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once the application has applied `index`, a read started when
    `request_ctx` was submitted may be served from local state and is linearizable."""

    request_ctx: bytes
    index: int


@dataclass(frozen=True)
class Ready:
    """Work the driver must do, in this order, before calling `RaftNode.advance(ready)`:

    1. Persist, then fsync (one fsync may cover all three):
       a. `snapshot`, if set: store it and discard every stored log entry;
       b. if `truncate_from` is set: discard stored entries with index >= truncate_from;
          then append `entries` (their first index is always the stored last index + 1);
       c. `hard_state`, if set (after the entries, so a stored commit never points past the log).
    2. Only then send `messages` (each has its `to`). Sending earlier could promise a vote or
       acknowledge entries that a crash would then forget, which breaks election safety and
       lets a "committed" entry vanish.
    3. Apply: restore the state machine from `snapshot` if set, then apply
       `committed_entries` in order, then serve `read_states` once applied >= their index.
    4. Call `advance(ready)`.

    `committed_entries` only ever lists entries that were persisted by an *earlier* Ready's
    step 1 (already confirmed by advance): nothing is applied that a crash could un-write,
    so after a restart the reloaded log always covers everything the state machine saw.
    """

    hard_state: HardState | None = None
    truncate_from: int | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    def is_empty(self) -> bool:
        return not (self.hard_state or self.entries or self.snapshot or self.messages
                    or self.committed_entries or self.read_states)


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match_index: int
    next_index: int
    state: str  # "probe" | "replicate" | "snapshot"
    recent_active: bool
    voter: bool


@dataclass(frozen=True)
class Status:
    """A snapshot of a node for `tidelog cluster status`; `peers` is filled on the leader only."""

    node_id: int
    role: str  # "follower" | "pre_candidate" | "candidate" | "leader"
    voter: bool
    term: int
    leader_id: int | None
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    peers: dict[int, PeerStatus] = field(default_factory=dict)
