"""The transactional producer's side of transactions: its coordinator requests and its state.

    producer = Producer(bootstrap_servers=..., transactional_id="orders-enricher-1")
    async with producer:
        async with producer.transaction():          # begin; commit on success, abort on exception
            await producer.send("enriched", b"...")
            await producer.send_offsets_to_transaction({tp: next_offset}, consumer)

How it works: at start the producer asks the coordinator (the active controller) for its
transactional id's producer id and a raised epoch (InitProducerId), which fences any older
producer with the same transactional id. Batches of a transaction carry the transactional bit.
Before the first batch of a partition is sent in a transaction, the sender asks the coordinator
to add the partition (AddPartitionsToTxn, several partitions per request); batches of a
partition not added yet wait in the accumulator meanwhile (`may_send`, checked by the sender).
commit_transaction() first flushes, then asks the coordinator to commit (EndTxn), which returns
once every partition holds its commit marker. abort_transaction() waits for batches in flight,
then asks for an abort.

Errors: a fenced producer (a newer one with the same transactional id, or its transaction timed
out) gets ProducerFencedError from every later call and must be closed. A batch that failed
inside a transaction makes commit_transaction() raise; abort_transaction() then aborts and gets
a new epoch from the coordinator (the failed batch left a gap in the sequence numbers), after
which the producer can run new transactions.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from client.errors import (
    IllegalStateError,
    InvalidTxnStateError,
    ProducerFencedError,
    TidelogError,
    error_for_code,
)
from client.producer.controller_calls import call_controller
from client.producer.idempotence import ProducerIdentity
from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest,
    EndTxnRequest,
    InitProducerIdRequest,
    OffsetCommitPartition,
    OffsetCommitTopic,
    TopicPartitions,
    TxnOffsetCommitRequest,
)
from client.protocol.records import ATTR_TRANSACTIONAL
from client.types import TopicPartition

# identity.broken while no transaction is open: send() refuses with this (no extra check on the
# send path, which already looks at identity.broken).
NOT_IN_TRANSACTION = "no transaction is open: call begin_transaction() (or use 'async with producer.transaction()')"
_FENCED_CODES = (ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH)


class TransactionManager:
    def __init__(self, cluster: Any, transactional_id: str, transaction_timeout_ms: int, *,
                 request_timeout_ms: float, retry_backoff_ms: float):
        self.cluster = cluster
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.identity: ProducerIdentity | None = None
        self.in_transaction = False
        self.added: set[TopicPartition] = set()  # partitions the coordinator has in the transaction
        self.offsets_added = False
        self.fatal: BaseException | None = None  # fenced: every later call raises it
        self._wanted: set[TopicPartition] = set()
        self._adding: asyncio.Task | None = None
        self.failed_partitions: dict[TopicPartition, BaseException] = {}
        self.wakeup: Callable[[], None] = lambda: None  # the sender's
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None  # fails everything queued
        self.fail_queued: Callable[[TopicPartition, BaseException], None] = lambda tp, exc: None

    # --- the coordinator ---------------------------------------------------------------------

    async def _call(self, make: Callable[[], Any], what: str) -> Any:
        """One coordinator request, retried on retriable errors (a controller change, a
        transaction still completing) within request_timeout_ms; fencing is fatal."""

        def refusal(response: Any, conn: Any) -> TidelogError:
            if response.error_code in _FENCED_CODES:
                return self._fenced(response.error_message or "")
            return error_for_code(response.error_code, response.error_message,
                                  f"{what} for transactional id {self.transactional_id!r} on broker {conn.broker}")

        return await call_controller(self.cluster, make, request_timeout_ms=self.request_timeout_ms,
                                     retry_backoff_ms=self.retry_backoff_ms, refusal=refusal)

    def _fenced(self, detail: str) -> ProducerFencedError:
        error = ProducerFencedError(
            f"transactional producer {self.transactional_id!r} was fenced: a newer producer with the same "
            f"transactional_id started, or its transaction timed out ({detail}). Close this producer")
        if self.fatal is None:
            self.fatal = error
            if self.identity is not None:
                self.identity.broken = str(error)
            self.on_fatal(error)
        return error

    async def init(self) -> ProducerIdentity:
        response = await self._call(lambda: InitProducerIdRequest(
            transactional_id=self.transactional_id, transaction_timeout_ms=self.transaction_timeout_ms),
            "InitProducerId")
        identity = ProducerIdentity(response.producer_id, response.producer_epoch)
        identity.attributes = ATTR_TRANSACTIONAL
        identity.broken = NOT_IN_TRANSACTION
        self.identity = identity
        return identity

    # --- the sender's gate ----------------------------------------------------------------------

    def may_send(self, tp: TopicPartition) -> bool:
        """Whether batches of `tp` may go out now; if not, its adding is under way."""
        if tp in self.added:
            return True
        if tp in self.failed_partitions:
            self.fail_queued(tp, self.failed_partitions[tp])
        elif self.fatal is None and self.in_transaction:
            self._wanted.add(tp)
            if self._adding is None:
                self._adding = asyncio.get_running_loop().create_task(self._add_wanted())
        return False

    async def _add_wanted(self) -> None:
        try:
            while self._wanted:
                wanted, self._wanted = self._wanted, set()
                by_topic: dict[str, list[int]] = {}
                for tp in sorted(wanted):
                    by_topic.setdefault(tp.topic, []).append(tp.partition)
                identity = self.identity
                try:
                    response = await self._call(lambda: AddPartitionsToTxnRequest(
                        transactional_id=self.transactional_id, producer_id=identity.producer_id,
                        producer_epoch=identity.producer_epoch,
                        topics=[TopicPartitions(t, ps) for t, ps in by_topic.items()]), "AddPartitionsToTxn")
                except TidelogError as exc:
                    self._fail_adding(wanted, exc)
                    continue
                for row in response.topics:
                    for result in row.partitions:
                        tp = TopicPartition(row.topic, result.partition)
                        if result.error_code == ErrorCode.NONE:
                            self.added.add(tp)
                        else:
                            self._fail_adding({tp}, error_for_code(result.error_code, None,
                                                                   "AddPartitionsToTxn", topic=tp.topic,
                                                                   partition=tp.partition))
        finally:
            self._adding = None
            self.wakeup()

    def _fail_adding(self, tps: set[TopicPartition], error: BaseException) -> None:
        """A partition could not join the transaction: its batches cannot be sent in it."""
        if self.identity is not None and self.identity.broken is None:
            self.identity.broken = f"a partition could not be added to the transaction ({error}); abort it"
        for tp in tps:
            self.failed_partitions[tp] = error

    # --- offsets, commit, abort ------------------------------------------------------------------

    async def send_offsets(self, offsets: dict[TopicPartition, int], group_id: str, member_id: str,
                           generation: int) -> None:
        identity = self.identity
        if not self.offsets_added or getattr(self, "_offsets_group", None) != group_id:
            await self._call(lambda: AddOffsetsToTxnRequest(
                transactional_id=self.transactional_id, producer_id=identity.producer_id,
                producer_epoch=identity.producer_epoch, group_id=group_id), "AddOffsetsToTxn")
            self.offsets_added = True
            self._offsets_group = group_id
        by_topic: dict[str, list[OffsetCommitPartition]] = {}
        for tp, offset in sorted(offsets.items()):
            by_topic.setdefault(tp.topic, []).append(OffsetCommitPartition(tp.partition, int(offset), ""))
        response = await self._call(lambda: TxnOffsetCommitRequest(
            transactional_id=self.transactional_id, producer_id=identity.producer_id,
            producer_epoch=identity.producer_epoch, group_id=group_id, member_id=member_id, generation=generation,
            topics=[OffsetCommitTopic(t, parts) for t, parts in by_topic.items()]), "TxnOffsetCommit")
        for row in response.topics:
            for result in row.partitions:
                if result.error_code != ErrorCode.NONE:
                    raise error_for_code(result.error_code, None, f"TxnOffsetCommit of group {group_id!r}",
                                         topic=row.topic, partition=result.partition)

    async def end(self, committed: bool) -> None:
        identity = self.identity
        if self.added or self.offsets_added:
            await self._call(lambda: EndTxnRequest(
                transactional_id=self.transactional_id, producer_id=identity.producer_id,
                producer_epoch=identity.producer_epoch, committed=committed), "EndTxn")
        self.close_transaction()

    def close_transaction(self) -> None:
        self.in_transaction = False
        self.added = set()
        self._wanted = set()
        self.offsets_added = False
        self.failed_partitions = {}
        if self.identity is not None and self.fatal is None:
            self.identity.broken = NOT_IN_TRANSACTION

    def begin(self) -> None:
        self.check_usable()
        if self.in_transaction:
            raise InvalidTxnStateError("begin_transaction() called while a transaction is open; commit or abort it first")
        self.in_transaction = True
        self.identity.broken = None

    def check_usable(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def require_open(self, what: str) -> None:
        self.check_usable()
        if not self.in_transaction:
            raise InvalidTxnStateError(f"{what} needs an open transaction: call begin_transaction() first")

    def send_error(self) -> BaseException:
        """What send() raises while identity.broken is set (see NOT_IN_TRANSACTION)."""
        if self.fatal is not None:
            return self.fatal
        if not self.in_transaction:
            return IllegalStateError(f"transactional producer {self.transactional_id!r}: {NOT_IN_TRANSACTION}")
        return IllegalStateError(f"transactional producer {self.transactional_id!r}: {self.identity.broken}; "
                                 f"call abort_transaction()")


async def wait_quietly(awaitable: Awaitable) -> None:
    try:
        await awaitable
    except Exception:
        pass
