"""What a leader knows about each peer's log, and how fast it may send to it.

A peer is in one of three states:

- PROBE: we do not know where its log diverges from ours. Send one append at a time and wait
  for the answer (or a heartbeat reply) before the next, walking `next_index` back on rejects.
- REPLICATE: the last append matched, so stream appends optimistically, advancing `next_index`
  as we send, with at most `max_inflight_appends` unacknowledged.
- SNAPSHOT: the entries it needs were compacted away; one InstallSnapshot is in flight.
"""

from __future__ import annotations

import enum
from collections import deque


class PeerState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    def __init__(self, next_index: int, voter: bool) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.voter = voter
        self.state = PeerState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each unacknowledged append
        self.pending_snapshot_index = 0
        self.snapshot_elapsed_ticks = 0
        # Set by any reply from the peer; check-quorum reads and clears it every election timeout.
        self.recent_active = False

    def is_paused(self, max_inflight_appends: int) -> bool:
        if self.state is PeerState.PROBE:
            return self.probe_sent
        if self.state is PeerState.REPLICATE:
            return len(self.inflight) >= max_inflight_appends
        return True

    def become_probe(self) -> None:
        if self.state is PeerState.SNAPSHOT:
            self.next_index = max(self.match_index + 1, self.pending_snapshot_index + 1)
        else:
            self.next_index = self.match_index + 1
        self._enter(PeerState.PROBE)

    def become_replicate(self) -> None:
        self.next_index = self.match_index + 1
        self._enter(PeerState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._enter(PeerState.SNAPSHOT)
        self.pending_snapshot_index = snapshot_index

    def _enter(self, state: PeerState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot_index = 0
        self.snapshot_elapsed_ticks = 0

    def sent_append(self, last_index: int | None) -> None:
        """Record an append carrying entries up to `last_index` (None: no entries)."""
        if self.state is PeerState.REPLICATE:
            if last_index is not None:
                self.next_index = last_index + 1
                self.inflight.append(last_index)
        elif self.state is PeerState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The peer's log matches ours up to `index`. Returns whether match_index moved."""
        updated = index > self.match_index
        if updated:
            self.match_index = index
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected_index: int, next_hint: int) -> bool:
        """The peer rejected an append whose prev_index was `rejected_index`. Returns False for
        a stale reject (an answer to an older append), which must not move next_index."""
        if self.state is PeerState.REPLICATE:
            if rejected_index <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected_index:
            return False
        self.next_index = max(min(rejected_index, next_hint), self.match_index + 1)
        self.probe_sent = False
        return True

    def free_one_inflight(self) -> None:
        """A heartbeat reply proves the peer is alive while our window is full: some append was
        probably lost, so let one more through. It will be rejected and trigger a re-probe."""
        if self.inflight:
            self.inflight.popleft()
