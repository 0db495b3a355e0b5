"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read is linearizable if it observes every write committed before it started. The leader
notes its commit index when the read arrives, then proves it was still the leader at that
moment by collecting heartbeat acknowledgements, tagged with the read's context, from a
majority. A deposed leader cannot collect them, so it cannot answer with a stale index.

Acknowledgement of a later read also confirms every earlier one (its heartbeats went out
after theirs arrived), so reads are released in arrival order.
"""

from __future__ import annotations

from collections import OrderedDict

from broker.raft.state import ReadState


class ReadIndexQueue:
    def __init__(self) -> None:
        # request_ctx -> (read index, voters that acknowledged), in arrival order
        self._pending: OrderedDict[bytes, tuple[int, set[int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_ctx: bytes) -> bool:
        return request_ctx in self._pending

    def add(self, request_ctx: bytes, index: int, leader_id: int) -> None:
        assert request_ctx not in self._pending, "read contexts are unique while pending"
        self._pending[request_ctx] = (index, {leader_id})

    def last_ctx(self) -> bytes:
        """Context to tag heartbeats with: acknowledging the newest confirms all."""
        return next(reversed(self._pending)) if self._pending else b""

    def ack(self, request_ctx: bytes, voter_id: int, quorum: int) -> list[ReadState]:
        """Record a voter's acknowledgement; return the reads it releases (maybe none)."""
        pending = self._pending.get(request_ctx)
        if pending is None:
            return []
        pending[1].add(voter_id)
        if len(pending[1]) < quorum:
            return []
        released: list[ReadState] = []
        while self._pending:
            ctx, (index, _) = self._pending.popitem(last=False)
            released.append(ReadState(ctx, index))
            if ctx == request_ctx:
                break
        return released

    def clear(self) -> None:
        self._pending.clear()
