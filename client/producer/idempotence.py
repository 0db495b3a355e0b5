"""The idempotent producer's identity: a producer id and epoch from the cluster, and the next
sequence number of every partition.

A batch gets its base sequence when it is encoded (ProducerBatch.build), which happens in each
partition's queue order, so sequences follow send order; a retry resends the same bytes, hence
the same sequences, and the partition leader answers a batch it already holds with its
original offsets instead of writing it again (broker/producer_state.py). With at most one
request per partition in flight (the sender's rule) and a retried batch sent alone, nothing can
overtake a batch, so the leader never sees a gap from a correct producer.

A batch that fails for good after its sequence was assigned (its delivery timeout ran out, or
the leader refused it) leaves a gap the leader will not accept past: this identity is then
`broken` and the producer refuses new sends with that cause. Create a new Producer (it gets a
new producer id) to go on.
"""

from __future__ import annotations

from client.types import TopicPartition


class ProducerIdentity:
    __slots__ = ("producer_id", "producer_epoch", "_next", "broken", "failure", "attributes")

    def __init__(self, producer_id: int, producer_epoch: int):
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self._next: dict[TopicPartition, int] = {}
        self.broken: str | None = None
        self.failure: BaseException | None = None  # the first batch failure (transactions report it)
        self.attributes = 0  # batch attributes: ATTR_TRANSACTIONAL for a transactional producer

    def assign(self, tp: TopicPartition, record_count: int) -> int:
        """The base sequence of the next batch of `tp` holding `record_count` records."""
        base = self._next.get(tp, 0)
        self._next[tp] = base + record_count
        return base

    def next_sequence(self, tp: TopicPartition) -> int:
        return self._next.get(tp, 0)

    def batch_failed(self, tp: TopicPartition, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        if self.broken is None:
            self.broken = (f"a batch of {tp.topic}-{tp.partition} failed after its sequence numbers were assigned "
                           f"({error}); later batches would leave a gap the leader refuses. Create a new Producer")
