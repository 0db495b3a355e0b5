"""Per-partition transaction state: open transactions, the last stable offset, aborted ranges.

Pure logic, no I/O. Like the producer sequence table (broker/producer_state.py) it is derived
from the partition's log alone, from batch headers:

- a transactional data batch (ATTR_TRANSACTIONAL, not ATTR_CONTROL) of producer P opens P's
  transaction in this partition at its base offset, unless one is open already;
- a control batch of P (the commit or abort marker the coordinator had written) closes P's open
  transaction; an abort marker adds (P, first offset, marker offset) to the aborted index.

So every replica holds the same state, followers update it as they replicate, and it is rebuilt
from the log whenever the log may have changed underneath it (opened, truncated). The only
records ever decoded are the control batches' single records (to tell commit from abort); data
records never are.

The last stable offset (LSO) is min(high watermark, first offset of every open transaction): a
read_committed consumer reads only below it, so it never sees a record whose transaction might
still abort. The aborted index answers which aborted transactions overlap a fetched range; the
consumer drops those producers' transactional batches by header (client/consumer/state.py).

Memory: one entry per open transaction and one per aborted transaction still in the log
(entries below the log start offset are dropped as retention deletes segments); a partition
that never saw a transaction holds nothing.

Coordinator fencing: a marker names the coordinator epoch (the controller's Raft term) that
wrote it; markers from an older coordinator epoch than the highest one seen by this broker are
refused (`TxnIndex` keeps no per-producer epochs for this: see broker/handlers/transactions.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable

import msgpack

from client.protocol import records

CONTROL_COMMIT = b"commit"  # the key of a commit marker's one record
CONTROL_ABORT = b"abort"
MARKER_ATTRIBUTES = records.ATTR_CONTROL | records.ATTR_TRANSACTIONAL


def build_marker(producer_id: int, producer_epoch: int, committed: bool, coordinator_epoch: int,
                 timestamp_ms: int) -> bytes:
    """A control batch of one record: key commit/abort, value msgpack [coordinator_epoch]."""
    key = CONTROL_COMMIT if committed else CONTROL_ABORT
    return records.build_batch(
        [(key, msgpack.packb([coordinator_epoch]), timestamp_ms, None)],
        attributes=MARKER_ATTRIBUTES, producer_id=producer_id, producer_epoch=producer_epoch,
    )


def marker_committed(buf, position: int = 0) -> bool:
    """Whether the control batch at `position` is a commit marker (decodes its one record)."""
    rows = records.decode_rows(buf, position)
    return bool(rows) and rows[0][2] == CONTROL_COMMIT


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    producer_id: int
    first_offset: int
    last_offset: int  # the abort marker's offset


class TxnIndex:
    """See the module docstring."""

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # producer id -> first offset of its open transaction
        self.aborted: list[AbortedTxn] = []  # by last_offset (markers are appended in order)
        self._first_open: int | None = None  # min(open.values()), cached

    # --- building ------------------------------------------------------------------------------

    def on_data(self, producer_id: int, base_offset: int) -> None:
        """A transactional data batch of `producer_id` was appended at `base_offset`."""
        if producer_id not in self.open:
            self.open[producer_id] = base_offset
            if self._first_open is None or base_offset < self._first_open:
                self._first_open = base_offset

    def on_marker(self, producer_id: int, offset: int, committed: bool) -> None:
        """A control batch of `producer_id` was appended at `offset`."""
        first = self.open.pop(producer_id, None)
        if first is None:
            return
        if not committed:
            self.aborted.append(AbortedTxn(producer_id, first, offset))
        if first == self._first_open:
            self._first_open = min(self.open.values()) if self.open else None

    @classmethod
    def rebuild(cls, rows: Iterable[tuple[int, int, int, bool | None]]) -> TxnIndex:
        """From (base_offset, last_offset, producer_id, committed) rows, oldest first; committed is
        None for a data batch, True/False for a commit/abort marker."""
        index = cls()
        for base_offset, _, producer_id, committed in rows:
            if committed is None:
                index.on_data(producer_id, base_offset)
            else:
                index.on_marker(producer_id, base_offset, committed)
        return index

    # --- reading -------------------------------------------------------------------------------

    def last_stable_offset(self, high_watermark: int) -> int:
        first = self._first_open
        return high_watermark if first is None or first >= high_watermark else first

    def aborted_between(self, start_offset: int, end_offset: int) -> list[tuple[int, int]]:
        """(producer_id, first_offset) of aborted transactions overlapping [start, end)."""
        aborted = self.aborted
        if not aborted:
            return []
        # aborted is sorted by last_offset: skip those that ended before start_offset.
        lo = bisect.bisect_left(aborted, start_offset, key=lambda txn: txn.last_offset)
        return [(txn.producer_id, txn.first_offset) for txn in aborted[lo:] if txn.first_offset < end_offset]

    def drop_before(self, log_start_offset: int) -> None:
        """Forget aborted transactions wholly below the log start (retention removed them)."""
        aborted = self.aborted
        if aborted and aborted[0].last_offset < log_start_offset:
            lo = bisect.bisect_left(aborted, log_start_offset, key=lambda txn: txn.last_offset)
            del aborted[:lo]


def txn_rows_from_batches(data, batch_bytes_max: int = records.BATCH_BYTES_FORMAT_MAX):
    """(base_offset, last_offset, producer_id, committed) of the transactional batches in `data`
    (concatenated stored batches), for TxnIndex: headers only, plus control records."""
    for position, header in records.iter_headers(data, batch_bytes_max, validate=False):
        if header.producer_id >= 0 and header.attributes & MARKER_ATTRIBUTES:
            committed = marker_committed(data, position) if header.is_control else None
            yield header.base_offset, header.last_offset, header.producer_id, committed


def rebuild_from_log(log) -> TxnIndex:
    """The index of a storage PartitionLog: its transactional batch headers, and one small read
    per control batch to tell commit from abort."""

    def rows():
        for base_offset, last_offset, producer_id, attributes in log.transactional_batches():
            committed = None
            if attributes & records.ATTR_CONTROL:
                data = log.read(base_offset, 1).read_bytes()  # at least the one whole batch
                committed = marker_committed(data, 0)
            yield base_offset, last_offset, producer_id, committed

    index = TxnIndex.rebuild(rows())
    index.drop_before(log.log_start_offset)
    return index
