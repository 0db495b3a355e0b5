"""Idempotent producers: per partition, what each producer id last wrote, so a retried batch is
answered with its original offsets instead of being appended twice.

Pure logic, no I/O. Every replica keeps the same table, derived from its log alone: the leader
updates it on each append, followers on each replicated append, and a table is rebuilt from the
batch headers in the log (`PartitionLog.producer_batches`) whenever the log may have changed
underneath it (opened from disk, truncated). So after a failover the new leader knows every
producer batch it holds, and a batch it never received is appended like a new one.

Rules for one produce request's batches of one partition (all from one producer id and epoch,
with consecutive sequence numbers; a producer sends a partition's batches in order, one
request at a time, so these are the only shapes a correct producer makes):
- an epoch below the producer's latest is a zombie: INVALID_PRODUCER_EPOCH, nothing written;
- a new epoch (or a producer this table does not know) starts its own sequence: accepted;
- a range inside one of the last `RETAINED_APPENDS` appends of this producer is a retry of
  something already written: DUPLICATE, answered with the offset the original append gave it;
- a range starting right after the producer's last sequence: APPEND;
- anything else (a gap, or an overlap with something no longer retained) is refused with
  OUT_OF_ORDER_SEQUENCE_NUMBER: appending it could reorder or duplicate records.
A producer not heard from is kept until `producers_max` newer ones push it out (least recently
written first); a forgotten producer's next batch is accepted as if new.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable

RETAINED_APPENDS = 5  # as Kafka: a producer retries at most its last few requests
PRODUCERS_MAX_DEFAULT = 10_000  # producer ids remembered per partition
SEQUENCE_MAX = 2**31 - 1


class Verdict(enum.Enum):
    APPEND = "append"
    DUPLICATE = "duplicate"
    FENCED = "fenced"  # INVALID_PRODUCER_EPOCH
    OUT_OF_ORDER = "out_of_order"  # OUT_OF_ORDER_SEQUENCE_NUMBER


@dataclass(slots=True)
class _Producer:
    epoch: int
    last_sequence: int
    # (first sequence, last sequence, first offset) of recent appends, oldest first.
    appends: deque = field(default_factory=lambda: deque(maxlen=RETAINED_APPENDS))


@dataclass(frozen=True, slots=True)
class BatchSequence:
    """One batch's producer fields, from its header."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_sequence(self) -> int:
        return self.base_sequence + self.record_count - 1


class ProducerStateTable:
    """Sequence state of every producer id seen in one partition's log (module docstring)."""

    def __init__(self, producers_max: int = PRODUCERS_MAX_DEFAULT):
        self.producers_max = producers_max
        self._producers: OrderedDict[int, _Producer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, batches: list[BatchSequence]) -> tuple[Verdict, int | None, str]:
        """Judge one request's batches; (verdict, original first offset for DUPLICATE, reason)."""
        first, last = batches[0], batches[-1]
        expected = first.base_sequence
        for batch in batches:
            if (batch.producer_id, batch.producer_epoch) != (first.producer_id, first.producer_epoch):
                return Verdict.OUT_OF_ORDER, None, "batches of one partition in one request must come from one producer"
            if batch.base_sequence != expected or batch.base_sequence < 0 or batch.last_sequence > SEQUENCE_MAX:
                return Verdict.OUT_OF_ORDER, None, f"batch sequence {batch.base_sequence} does not follow {expected - 1}"
            expected = batch.last_sequence + 1
        known = self._producers.get(first.producer_id)
        if known is None or first.producer_epoch > known.epoch:
            return Verdict.APPEND, None, ""
        if first.producer_epoch < known.epoch:
            return Verdict.FENCED, None, (f"producer {first.producer_id} epoch {first.producer_epoch} is older than "
                                          f"its current epoch {known.epoch}")
        for first_sequence, last_sequence, first_offset in known.appends:
            if first_sequence <= first.base_sequence and last.last_sequence <= last_sequence:
                return Verdict.DUPLICATE, first_offset + (first.base_sequence - first_sequence), ""
        if first.base_sequence == known.last_sequence + 1:
            return Verdict.APPEND, None, ""
        return Verdict.OUT_OF_ORDER, None, (
            f"producer {first.producer_id} sent sequence {first.base_sequence}, expected {known.last_sequence + 1}")

    def record(self, producer_id: int, producer_epoch: int, first_sequence: int, last_sequence: int,
               first_offset: int) -> None:
        """An append of this producer's sequences [first, last] starting at `first_offset`."""
        known = self._producers.get(producer_id)
        if known is None or producer_epoch > known.epoch:
            known = _Producer(producer_epoch, last_sequence)
            self._producers[producer_id] = known
        else:
            known.last_sequence = last_sequence
        self._producers.move_to_end(producer_id)
        appends = known.appends
        if appends and appends[-1][1] + 1 == first_sequence and \
                appends[-1][2] + (appends[-1][1] - appends[-1][0]) + 1 == first_offset:
            # Adjacent in sequences and offsets (several batches of one request, or a
            # replicated batch after its neighbour): one range keeps more history per slot.
            start_sequence, _, start_offset = appends[-1]
            appends[-1] = (start_sequence, last_sequence, start_offset)
        else:
            appends.append((first_sequence, last_sequence, first_offset))
        while len(self._producers) > self.producers_max:
            self._producers.popitem(last=False)

    def record_batches(self, rows: Iterable[tuple[int, int, int, int, int]]) -> None:
        """Replay (base_offset, producer_id, producer_epoch, base_sequence, last_offset_delta)
        rows, oldest first: a rebuild from the log, or a follower's replicated append."""
        for base_offset, producer_id, producer_epoch, base_sequence, last_delta in rows:
            if producer_id >= 0 and base_sequence >= 0:
                self.record(producer_id, producer_epoch, base_sequence, base_sequence + last_delta, base_offset)
            elif producer_id >= 0:  # a transaction marker (no sequence): it carries the newest epoch
                self.fence_below(producer_id, producer_epoch)

    def fence_below(self, producer_id: int, producer_epoch: int) -> None:
        """A transaction marker written with `producer_epoch` (the coordinator raised the epoch to
        fence an older producer of the same transactional id): batches of older epochs are refused
        from now on, and the new epoch starts its own sequence."""
        known = self._producers.get(producer_id)
        if known is None or producer_epoch > known.epoch:
            self._producers[producer_id] = _Producer(producer_epoch, -1)
            self._producers.move_to_end(producer_id)
            while len(self._producers) > self.producers_max:
                self._producers.popitem(last=False)

    @classmethod
    def rebuild(cls, rows: Iterable[tuple[int, int, int, int, int]],
                producers_max: int = PRODUCERS_MAX_DEFAULT) -> ProducerStateTable:
        table = cls(producers_max)
        table.record_batches(rows)
        return table
