"""A fake disk, a checkable state machine and a driver loop for RaftNode, shared by the unit
tests (tests/test_raft_core.py, over a perfect network) and the randomized simulator.

The driver follows the Ready contract exactly: persist (here: copy into `Disk`), then hand the
messages out for sending, then apply, then advance. A crash discards the RaftNode and the
application; only `Disk` survives, so anything a Ready did not persist is lost.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from broker.raft import (
    Entry, EntryKind, HardState, Message, PersistentState, RaftConfig, RaftNode, Ready, ReadState, Snapshot,
    SnapshotMeta,
)


class Disk:
    """What survives a crash: exactly what Readies asked to persist, plus compaction snapshots."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    @property
    def first_index(self) -> int:
        return (self.snapshot.meta.index if self.snapshot else 0) + 1

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.entries) - 1

    def persist(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.snapshot, self.entries = ready.snapshot, []
        if ready.truncate_from is not None:
            assert ready.truncate_from >= self.first_index, "Ready never truncates into the snapshot"
            del self.entries[ready.truncate_from - self.first_index:]
        if ready.entries:
            assert ready.entries[0].index == self.last_index + 1, (
                f"Ready.entries start at {ready.entries[0].index}, stored log ends at {self.last_index}")
            self.entries.extend(ready.entries)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def save_compaction(self, meta: SnapshotMeta, data: bytes) -> None:
        assert meta.index <= self.last_index, "only persisted entries are compacted"
        del self.entries[:meta.index - self.first_index + 1]
        self.snapshot = Snapshot(meta, data)

    @classmethod
    def from_state(cls, state: PersistentState) -> Disk:
        disk = cls()
        disk.hard_state, disk.snapshot, disk.entries = state.hard_state, state.snapshot, list(state.entries)
        return disk

    def load(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))


GENESIS_DIGEST = b"\0" * 16


def chain_digest(digest: bytes, entry: Entry) -> bytes:
    """Digest of the applied sequence, extended by one entry: equal digests at an index mean
    equal histories up to it, which is what State Machine Safety asks of every node."""
    h = hashlib.blake2b(digest, digest_size=16)
    h.update(b"%d:%d:%d:" % (entry.index, entry.term, entry.kind))
    h.update(entry.data)
    return h.digest()


@dataclass
class App:
    """The replicated state machine: the list of applied NORMAL payloads plus a running digest."""

    applied_index: int = 0
    digest: bytes = GENESIS_DIGEST
    values: list[bytes] = field(default_factory=list)

    def apply(self, entry: Entry) -> None:
        assert entry.index == self.applied_index + 1, (
            f"applied {entry.index} right after {self.applied_index}: committed entries must come in order")
        self.applied_index = entry.index
        self.digest = chain_digest(self.digest, entry)
        if entry.kind is EntryKind.NORMAL:
            self.values.append(entry.data)

    def snapshot_bytes(self) -> bytes:
        return msgpack.packb([self.applied_index, self.digest, self.values])

    @classmethod
    def from_snapshot(cls, data: bytes) -> App:
        index, digest, values = msgpack.unpackb(data)
        return cls(index, digest, values)


@dataclass
class NodeDriver:
    """One simulated broker: its disk outlives `raft`/`app`, which a crash throws away."""

    node_id: int
    voters: frozenset[int]
    observers: frozenset[int]
    config: RaftConfig
    rng: random.Random
    disk: Disk = field(default_factory=Disk)
    raft: RaftNode | None = None
    app: App = field(default_factory=App)
    outstanding: Ready | None = None
    read_states: list[ReadState] = field(default_factory=list)  # answered reads, oldest first
    compact_every: int = 0  # compact once this many entries are applied past the snapshot; 0 = never
    on_apply: Callable[[int, Entry, App], None] | None = None
    on_snapshot: Callable[[int, App], None] | None = None

    @property
    def up(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        assert self.raft is None
        self.raft = RaftNode(self.node_id, self.voters, self.disk.load(), random.Random(self.rng.getrandbits(64)),
                             self.config, observers=self.observers)
        self.app = App.from_snapshot(self.disk.snapshot.data) if self.disk.snapshot else App()
        if self.on_snapshot and self.disk.snapshot:
            self.on_snapshot(self.node_id, self.app)

    def crash(self) -> None:
        self.raft, self.outstanding, self.app = None, None, App()

    def take_ready(self) -> Ready | None:
        """Start the next Ready (the 'fsync' may complete later); None if nothing to do."""
        assert self.raft is not None
        if self.outstanding is not None or not self.raft.has_ready():
            return None
        self.outstanding = self.raft.ready()
        return self.outstanding

    def persist(self, ready: Ready) -> None:
        assert ready is self.outstanding
        self.disk.persist(ready)

    def apply_and_advance(self, ready: Ready) -> None:
        """After persisting and sending: apply, advance, maybe compact."""
        assert self.raft is not None and ready is self.outstanding
        if ready.snapshot is not None:
            self.app = App.from_snapshot(ready.snapshot.data)
            if self.on_snapshot:
                self.on_snapshot(self.node_id, self.app)
        for entry in ready.committed_entries:
            self.app.apply(entry)
            if self.on_apply:
                self.on_apply(self.node_id, entry, self.app)
        self.read_states.extend(ready.read_states)
        self.outstanding = None
        self.raft.advance(ready)
        self._maybe_compact()

    def run_ready(self) -> list[Message]:
        """Synchronous driver step: persist, then return the messages to send. Applies too."""
        ready = self.take_ready()
        if ready is None:
            return []
        self.persist(ready)
        self.apply_and_advance(ready)
        return list(ready.messages)

    def _maybe_compact(self) -> None:
        raft = self.raft
        assert raft is not None
        applied = self.app.applied_index
        if self.compact_every and applied - raft.log.snapshot_index >= self.compact_every:
            data = self.app.snapshot_bytes()
            meta = raft.compact(applied, data)
            if meta is not None:
                self.disk.save_compaction(meta, data)
