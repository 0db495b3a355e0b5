"""Producer: aiokafka's AIOKafkaProducer shape on tidelog's protocol.

    async with Producer(bootstrap_servers="127.0.0.1:9292", acks="all", linger_ms=5) as producer:
        fut = await producer.send("orders", value=b"...", key=b"customer-7")  # queued
        meta = await fut                                                     # RecordMetadata

`send` only queues: it serializes, picks the partition, and appends to the accumulator. It
awaits only when the producer has `buffer_memory` bytes waiting (then it waits for room, FIFO)
or when it first meets a topic (metadata). One sender task does all the network work.

Bulk producers use `send_batch(topic, values, keys=...)`: the same placement, ordering, memory
cap and acknowledgements as a loop of `send`, for a few C-level passes over the values instead
of a coroutine and a future per record (about 0.45 us per 100-byte record against about 1.6 us
through `send`), and one BulkFuture for the call.

Defaults follow aiokafka: acks=1, linger_ms=0 (send as soon as the sender runs; records sent in
a burst without yielding still share batches), batch_size=16384 bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from itertools import accumulate, repeat
from operator import add
from typing import Any, Callable, Iterable, Sequence

from client.cluster import METADATA_MAX_AGE_MS_DEFAULT, RETRY_BACKOFF_MS_DEFAULT, Cluster
from client.errors import (
    IllegalStateError,
    InvalidTxnStateError,
    RecordTooLargeError,
    TidelogError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.producer.accumulator import (
    _RECORD_OVERHEAD_BYTES,
    BATCH_OVERHEAD_BYTES,
    NEW_BATCH,
    Accumulator,
    BulkFuture,
    RecordFuture,
)
from client.producer.partitioner import partition_for_key
from client.producer.sender import REQUEST_OVERHEAD_BYTES, Sender
from client.protocol.limits import (
    FRAME_BYTES_MAX_DEFAULT,
    IN_FLIGHT_REQUESTS_MAX_DEFAULT,
    MiB,
    PRODUCER_BUFFER_BYTES_MAX_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.producer.controller_calls import call_controller
from client.producer.idempotence import ProducerIdentity
from client.producer.transactions import TransactionManager
from client.protocol.messages import ApiKey, InitProducerIdRequest
from client.security import SecurityConfig
from client.types import RecordMetadata, TopicPartition

_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}
# Types whose len() is their byte count: the bulk path sizes them with C-level map/accumulate.
_FLAT_BYTES_TYPES = frozenset((bytes, bytearray))


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


def _value_bytes(value: Any, what: str) -> int:
    """Bytes of a key or value (0 for None); TypeError for anything but bytes-like."""
    if value is None:
        return 0
    _check_bytes(value, what)
    return value.nbytes if isinstance(value, memoryview) else len(value)


def _check_bytes(value: Any, what: str) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{what} must be bytes (or None), got {type(value).__name__}; pass a {what}_serializer to send other types"
        )


class Producer:
    def __init__(
        self,
        bootstrap_servers: str | Iterable[str] = "127.0.0.1:9292",
        *,
        client_id: str = "tidelog-python",
        acks: int | str = 1,
        linger_ms: float = 0,
        batch_size: int = 16384,
        buffer_memory: int = PRODUCER_BUFFER_BYTES_MAX_DEFAULT,
        max_request_size: int = 1 * MiB,
        request_timeout_ms: float = REQUEST_TIMEOUT_MS_DEFAULT,
        delivery_timeout_ms: float = 120_000,
        retry_backoff_ms: float = RETRY_BACKOFF_MS_DEFAULT,
        metadata_max_age_ms: float = METADATA_MAX_AGE_MS_DEFAULT,
        max_in_flight_requests_per_connection: int = IN_FLIGHT_REQUESTS_MAX_DEFAULT,
        key_serializer: Callable[[Any], bytes] | None = None,
        value_serializer: Callable[[Any], bytes] | None = None,
        partitioner: Callable[[bytes | None, list[int], list[int]], int] | None = None,
        enable_idempotence: bool | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
        clock: Callable[[], float] | None = None,
        security_protocol: str = "PLAINTEXT",
        ssl_context: Any = None,
        sasl_mechanism: str = "SCRAM-SHA-256",
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
        rng: random.Random | None = None,
    ):
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1, 'all' or -1, got {acks!r}")
        if transactional_id is not None:
            # A transaction is idempotent and acks=all by construction (client/producer/transactions.py).
            if not isinstance(transactional_id, str) or not transactional_id:
                raise ValueError(f"transactional_id must be a non-empty str, got {transactional_id!r}")
            if enable_idempotence is False:
                raise ValueError("a transactional producer is idempotent: enable_idempotence=False contradicts it")
            if acks not in ("all", -1, "-1"):
                if acks != 1:  # 1 is the default: taken as "not chosen"
                    raise ValueError(f"a transactional producer needs acks='all', got acks={acks!r}")
                acks = "all"
            if not transaction_timeout_ms > 0:
                raise ValueError(f"transaction_timeout_ms must be positive, got {transaction_timeout_ms!r}")
            enable_idempotence = True
        if enable_idempotence is None:
            enable_idempotence = _ACKS[acks] == -1  # Kafka's default since 3.0: on with acks=all
        if enable_idempotence and _ACKS[acks] != -1:
            raise ValueError(f"enable_idempotence=True needs acks='all' (got acks={acks!r}): a record acknowledged "
                             f"by the leader alone may be lost in a failover and then sent again")
        for name, value in (
            ("batch_size", batch_size), ("buffer_memory", buffer_memory), ("max_request_size", max_request_size),
            ("request_timeout_ms", request_timeout_ms), ("delivery_timeout_ms", delivery_timeout_ms),
            ("max_in_flight_requests_per_connection", max_in_flight_requests_per_connection),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if linger_ms < 0 or retry_backoff_ms < 0:
            raise ValueError("linger_ms and retry_backoff_ms must not be negative")
        if max_request_size <= REQUEST_OVERHEAD_BYTES + BATCH_OVERHEAD_BYTES:
            raise ValueError(f"max_request_size must exceed {REQUEST_OVERHEAD_BYTES + BATCH_OVERHEAD_BYTES} bytes")
        if max_request_size > FRAME_BYTES_MAX_DEFAULT // 2:
            raise ValueError(f"max_request_size must be at most {FRAME_BYTES_MAX_DEFAULT // 2} bytes")
        # TLS / SASL, as in aiokafka (client/security.py); checked here, used by every connection.
        self._security = SecurityConfig.from_kwargs(security_protocol, ssl_context, sasl_mechanism,
                                                    sasl_plain_username, sasl_plain_password)
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.acks = _ACKS[acks]
        self.linger_ms = linger_ms
        self.max_request_size = max_request_size
        # A batch must fit in one request: batch_size above that would only make oversized batches.
        self.batch_size = min(batch_size, max_request_size - REQUEST_OVERHEAD_BYTES)
        self.buffer_memory = buffer_memory
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.max_in_flight = max_in_flight_requests_per_connection
        self._key_serializer = key_serializer
        self._value_serializer = value_serializer
        self._partitioner = partitioner
        self._clock = clock or _monotonic_ms
        self._rng = rng or random.Random()
        self._record_bytes_max = min(max_request_size - REQUEST_OVERHEAD_BYTES - BATCH_OVERHEAD_BYTES, buffer_memory)
        self._cluster: Cluster | None = None
        self._accumulator: Accumulator | None = None
        self._sender: Sender | None = None
        self._tps: dict[str, tuple[TopicPartition, ...]] = {}
        self._sticky: dict[str, TopicPartition] = {}
        self._running = False
        self._stopped = False
        self._failure: BaseException | None = None
        self.enable_idempotence = enable_idempotence
        self._identity: ProducerIdentity | None = None
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self._txn: TransactionManager | None = None

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running or self._stopped:
            raise IllegalStateError("Producer.start() was already called")
        loop = asyncio.get_running_loop()
        self._cluster = Cluster(
            self.bootstrap_servers,
            request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms,
            metadata_max_age_ms=self.metadata_max_age_ms,
            max_in_flight=self.max_in_flight,
            required_apis=(ApiKey.PRODUCE, ApiKey.METADATA),
            allow_auto_topic_creation=True,
            client_id=self.client_id,
            security=self._security,
        )
        await self._cluster.start()  # on failure it closes what it opened
        self._cluster.add_listener(self._tps.clear)  # partition counts may have changed
        if self.enable_idempotence:
            try:
                if self.transactional_id is not None:
                    self._txn = TransactionManager(
                        self._cluster, self.transactional_id, self.transaction_timeout_ms,
                        request_timeout_ms=self.request_timeout_ms, retry_backoff_ms=self.retry_backoff_ms)
                    self._identity = await self._txn.init()
                else:
                    self._identity = await self._init_producer_id()
            except BaseException:
                await self._cluster.close()
                raise
        self._accumulator = Accumulator(
            batch_size=self.batch_size,
            buffer_memory=self.buffer_memory,
            linger_ms=self.linger_ms,
            delivery_timeout_ms=self.delivery_timeout_ms,
            clock=self._clock,
            loop=loop,
        )
        self._accumulator.identity = self._identity
        self._sender = Sender(
            self._accumulator,
            self._cluster,
            acks=self.acks,
            request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms,
            max_request_size=self.max_request_size,
            clock=self._clock,
            on_fatal=self._on_sender_failure,
        )
        self._accumulator._wakeup = self._sender.wakeup
        if self._txn is not None:
            txn, accumulator = self._txn, self._accumulator
            self._sender.txn = txn
            txn.wakeup = self._sender.wakeup
            txn.on_fatal = accumulator.fail_all
            txn.fail_queued = lambda tp, exc: accumulator.expire(tp, float("inf"), lambda batch: exc)
        self._sender.start()
        self._running = True

    def _on_sender_failure(self, error: BaseException) -> None:
        self._running = False
        self._failure = error

    async def stop(self) -> None:
        """Deliver everything queued (bounded by delivery_timeout_ms), then close."""
        if not self._running:
            self._stopped = True
            if self._cluster is not None:
                await self._cluster.close()
            return
        txn = self._txn
        if txn is not None and txn.in_transaction and txn.fatal is None:
            try:  # a transaction left open is aborted rather than left to time out
                await self.abort_transaction()
            except TidelogError:
                pass
        self._running = False
        self._stopped = True
        try:
            self._accumulator.closing = True
            self._sender.wakeup()
            await self._accumulator.wait_incomplete()
        finally:
            await self._sender.stop()
            self._accumulator.fail_all(IllegalStateError("the producer stopped before the record was sent"))
            await self._cluster.close()

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # --- sending --------------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> RecordFuture:
        """Queue a record; returns a future of its RecordMetadata (aiokafka's contract).

        Raises RecordTooLargeError at once for a record that can never fit in a request, and
        UnknownTopicOrPartitionError when the topic does not appear within request_timeout_ms."""
        if not self._running or (self._identity is not None and self._identity.broken is not None):
            raise self._not_running_error()
        if self._key_serializer is not None and key is not None:
            key = self._key_serializer(key)
        if self._value_serializer is not None and value is not None:
            value = self._value_serializer(value)
        size = _RECORD_OVERHEAD_BYTES
        if key is not None:
            if type(key) is not bytes:
                _check_bytes(key, "key")
            size += len(key)
        if value is not None:
            if type(value) is not bytes:
                _check_bytes(value, "value")
            size += len(value)
        if headers:
            size += sum(len(name) + (len(val) if val else 0) + 4 for name, val in headers)
        if size > self._record_bytes_max:
            self._raise_too_large(size)
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        tps = self._tps.get(topic)
        if tps is None:
            tps = await self._partitions_of(topic)
        accumulator = self._accumulator
        if partition is not None:
            tp = self._explicit_partition(topic, tps, partition)
        elif self._partitioner is not None:
            tp = self._custom_partition(topic, tps, key)
        elif key is not None:
            tp = tps[partition_for_key(key if type(key) is bytes else bytes(key), len(tps))]
        else:
            # Keyless: stick to one partition until its batch is full or sent (Kafka's sticky
            # partitioner), so keyless records make full batches yet spread over partitions.
            tp = self._sticky.get(topic) or self._next_sticky(topic, tps, None)
            record = accumulator.try_append(tp, key, value, timestamp_ms, headers, size, True)
            if record is NEW_BATCH:
                tp = self._next_sticky(topic, tps, tp)
                record = accumulator.try_append(tp, key, value, timestamp_ms, headers, size)
            if record is None:
                record = await accumulator.append(tp, key, value, timestamp_ms, headers, size)
            return record
        record = accumulator.try_append(tp, key, value, timestamp_ms, headers, size)
        if record is None:
            record = await accumulator.append(tp, key, value, timestamp_ms, headers, size)
        return record

    async def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        *,
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> BulkFuture:
        """Queue many records in one call: the bulk fast path (log shippers, pipelines, benchmarks).

        It does what a loop of send() would, for the cost of a few C-level passes over `values`
        instead of a coroutine and a future per record: records are cut into batches with one
        bisect and appended with one list comprehension per batch. Differences from send():
        every record of the call gets the same timestamp (`timestamp_ms`, default now) and no
        headers; `keys` is None or a sequence as long as `values` (None entries allowed).

        Placement is send()'s: an explicit `partition` takes every record; otherwise keyed
        records go by murmur2 of their key (or the custom partitioner) and keyless ones to the
        sticky partition. Records of one partition keep the order they have in `values`, after
        everything sent before. Like send(), it awaits only for metadata of a new topic or for
        buffer memory. All records are checked before any is queued: RecordTooLargeError or
        TypeError leave nothing behind.

        Returns a BulkFuture: `await` it (or add_done_callback) to learn that all were
        acknowledged; its result is the list of RecordMetadata in the order of `values`."""
        if not self._running or (self._identity is not None and self._identity.broken is not None):
            raise self._not_running_error()
        loop = asyncio.get_running_loop()
        if not isinstance(values, (list, tuple)):
            values = list(values)
        count = len(values)
        if keys is not None:
            if not isinstance(keys, (list, tuple)):
                keys = list(keys)
            if len(keys) != count:
                raise ValueError(f"send_batch got {count} values but {len(keys)} keys")
        if self._value_serializer is not None:
            serialize = self._value_serializer
            values = [None if value is None else serialize(value) for value in values]
        if keys is not None and self._key_serializer is not None:
            serialize = self._key_serializer
            keys = [None if key is None else serialize(key) for key in keys]
        sizes = self._record_sizes(values, keys)
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        segments: list = []
        if count == 0:
            return BulkFuture(loop, segments, 0, timestamp_ms)
        tps = self._tps.get(topic)
        if tps is None:
            tps = await self._partitions_of(topic)
        if partition is not None:
            tp = self._explicit_partition(topic, tps, partition)
            await self._extend(topic, tps, tp, values, keys, timestamp_ms, sizes, None, segments)
        elif self._partitioner is None and (keys is None or len(tps) == 1 and None not in keys):
            await self._extend(topic, tps, None, values, keys, timestamp_ms, sizes, None, segments)
        else:
            for tp, positions in self._group_by_partition(topic, tps, keys, count).items():
                await self._extend(
                    topic, tps, tp, [values[i] for i in positions], None if keys is None else [keys[i] for i in positions],
                    timestamp_ms, [sizes[i] for i in positions], positions, segments,
                )
        return BulkFuture(loop, segments, count, timestamp_ms)

    def _record_sizes(self, values: Sequence[Any], keys: Sequence[Any] | None) -> list[int]:
        """Each record's estimated size (as send() counts it), checking types and the size limit."""
        count = len(values)
        if set(map(type, values)) <= _FLAT_BYTES_TYPES:
            sizes = list(map(add, map(len, values), repeat(_RECORD_OVERHEAD_BYTES, count)))
        else:
            sizes = [_RECORD_OVERHEAD_BYTES + _value_bytes(value, "value") for value in values]
        if keys is not None:
            if set(map(type, keys)) <= _FLAT_BYTES_TYPES:
                sizes = list(map(add, sizes, map(len, keys)))
            else:
                sizes = [size + _value_bytes(key, "key") for size, key in zip(sizes, keys)]
        if sizes and max(sizes) > self._record_bytes_max:
            self._raise_too_large(max(sizes))
        return sizes

    def _group_by_partition(
        self, topic: str, tps: tuple[TopicPartition, ...], keys, count: int
    ) -> dict[TopicPartition, list[int]]:
        """Input positions per partition, as send() would place each record."""
        groups: dict[TopicPartition, list[int]] = {}
        sticky = None
        for position, key in enumerate(keys if keys is not None else repeat(None, count)):
            if self._partitioner is not None:
                tp = self._custom_partition(topic, tps, key)
            elif key is not None:
                tp = tps[partition_for_key(key if type(key) is bytes else bytes(key), len(tps))]
            else:
                tp = sticky = sticky or self._sticky.get(topic) or self._next_sticky(topic, tps, None)
            group = groups.get(tp)
            if group is None:
                groups[tp] = [position]
            else:
                group.append(position)
        return groups

    async def _extend(self, topic, tps, tp, values, keys, timestamp_ms: int, sizes: list[int], positions, segments) -> None:
        """Append `values` to tp (None: the sticky partition), batch by batch; note each piece."""
        accumulator = self._accumulator
        ends = list(accumulate(sizes))
        sticky = tp is None
        if sticky:
            tp = self._sticky.get(topic) or self._next_sticky(topic, tps, None)
        lo, count = 0, len(values)
        while lo < count:
            got = accumulator.try_extend(tp, values, keys, timestamp_ms, ends, lo, count, sticky)
            if got is NEW_BATCH:
                tp = self._next_sticky(topic, tps, tp)
                got = accumulator.try_extend(tp, values, keys, timestamp_ms, ends, lo, count)
            if got is None:  # buffer memory is full: queue this record the waiting way
                key = None if keys is None else keys[lo]
                record = await accumulator.append(tp, key, values[lo], timestamp_ms, None, sizes[lo])
                end = lo + 1
                batch, first = record._batch, record._index
            else:
                batch, first, end = got
            segments.append((batch, first, end - lo, range(lo, end) if positions is None else positions[lo:end]))
            lo = end

    async def send_and_wait(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> RecordMetadata:
        """Send one record and wait until the broker has it."""
        future = await self.send(topic, value, key, partition, timestamp_ms, headers)
        return await future

    async def flush(self) -> None:
        """Send every queued record now (ignoring linger_ms) and wait until all are answered."""
        if self._accumulator is None:
            return
        self._accumulator.begin_flush()
        try:
            await self._accumulator.wait_incomplete()
        finally:
            self._accumulator.end_flush()

    async def partitions_for(self, topic: str) -> set[int]:
        """The partition ids of a topic (waits for metadata like send does)."""
        return {tp.partition for tp in await self._partitions_of(topic)}

    @property
    def metrics(self) -> dict[str, int]:
        """Counters: produce requests, batches and records sent, retries, buffered bytes."""
        sender, acc = self._sender, self._accumulator
        if sender is None or acc is None:
            return {}
        return {
            "produce_requests": sender.produce_requests,
            "batches_sent": sender.batches_sent,
            "records_sent": sender.records_sent,
            "retries": sender.retries,
            "batches_created": acc.batches_created,
            "buffered_bytes": acc.buffered_bytes,
            "metadata_refreshes": self._cluster.refreshes,
        }

    # --- transactions (client/producer/transactions.py) ----------------------------------------

    def _transactions(self) -> TransactionManager:
        if self._txn is None:
            raise IllegalStateError("transactions need Producer(transactional_id=...)")
        if not self._running:
            raise self._not_running_error()
        return self._txn

    def begin_transaction(self) -> None:
        """Open a transaction: records sent until commit_transaction() or abort_transaction() are
        seen by read_committed consumers all together, or never."""
        self._transactions().begin()

    async def commit_transaction(self) -> None:
        """Send everything queued, then commit: returns once every partition of the transaction
        holds its commit marker (read_committed consumers see the records from then on).
        Raises the cause if a record of the transaction failed (then call abort_transaction())."""
        txn = self._transactions()
        txn.require_open("commit_transaction()")
        await self.flush()
        txn.check_usable()
        identity = self._identity
        if identity.failure is not None or txn.failed_partitions:
            cause = identity.failure or next(iter(txn.failed_partitions.values()))
            raise InvalidTxnStateError(f"transaction of {self.transactional_id!r} cannot commit: a record failed "
                                       f"({cause}); call abort_transaction()")
        await txn.end(committed=True)

    async def abort_transaction(self) -> None:
        """Abort: read_committed consumers never see the records sent in this transaction."""
        txn = self._transactions()
        txn.require_open("abort_transaction()")
        await self._accumulator.wait_incomplete()  # batches in flight must not land after the marker
        txn.check_usable()
        await txn.end(committed=False)
        if self._identity.failure is not None:
            # A failed batch left a gap in this epoch's sequences: start a new epoch.
            self._identity = self._accumulator.identity = await txn.init()

    def transaction(self) -> _Transaction:
        """`async with producer.transaction():` begins; commits on success, aborts on an exception."""
        return _Transaction(self)

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: Any) -> None:
        """Commit a consumer group's offsets (the next offset to read, per partition) with the
        transaction: they count only if it commits. `group_id` is the group's id, or the
        Consumer itself: then its member id and generation go along and the coordinator checks
        them as for a commit (a consumer whose partitions moved cannot commit them)."""
        txn = self._transactions()
        txn.require_open("send_offsets_to_transaction()")
        member_id, generation = "", -1
        if not isinstance(group_id, str):
            consumer = group_id
            group_id = consumer.group_id
            membership = getattr(consumer, "_group", None)
            if membership is not None:
                member_id, generation = membership.member_id, membership.generation
        if not group_id:
            raise ValueError("send_offsets_to_transaction needs a group id (or a Consumer with a group_id)")
        await txn.send_offsets(dict(offsets), group_id, member_id, generation)

    # --- helpers --------------------------------------------------------------------------------

    async def _init_producer_id(self) -> ProducerIdentity:
        """A producer id from the active controller (InitProducerId), retrying retriable errors
        (no controller yet, NOT_CONTROLLER after a failover) within request_timeout_ms."""
        response = await call_controller(
            self._cluster, InitProducerIdRequest, request_timeout_ms=self.request_timeout_ms,
            retry_backoff_ms=self.retry_backoff_ms,
            refusal=lambda r, conn: error_for_code(r.error_code, r.error_message, f"InitProducerId on broker {conn.broker}"))
        return ProducerIdentity(response.producer_id, response.producer_epoch)

    def _not_running_error(self) -> BaseException:
        if self._txn is not None and self._running:
            return self._txn.send_error()
        if self._identity is not None and self._identity.broken is not None:
            return IllegalStateError(f"idempotent producer {self._identity.producer_id}: {self._identity.broken}")
        if self._failure is not None:
            return IllegalStateError(f"the producer's sender failed: {self._failure!r}")
        if self._stopped:
            return IllegalStateError("the producer is stopped")
        return IllegalStateError("call Producer.start() (or use 'async with') first")

    def _raise_too_large(self, size: int):
        if size > self.buffer_memory:
            raise RecordTooLargeError(size, self.buffer_memory, "buffer_memory")
        raise RecordTooLargeError(
            size + BATCH_OVERHEAD_BYTES + REQUEST_OVERHEAD_BYTES, self.max_request_size, "max_request_size"
        )

    async def _partitions_of(self, topic: str) -> tuple[TopicPartition, ...]:
        ids = self._cluster.partitions_for(topic)
        if not ids:
            ids = await self._cluster.wait_for_topic(topic, self.request_timeout_ms)
        tps = tuple(TopicPartition(topic, p) for p in ids)
        self._tps[topic] = tps
        return tps

    def _explicit_partition(self, topic: str, tps: tuple[TopicPartition, ...], partition: int) -> TopicPartition:
        if 0 <= partition < len(tps) and tps[partition].partition == partition:
            return tps[partition]
        for tp in tps:
            if tp.partition == partition:
                return tp
        raise UnknownTopicOrPartitionError(
            f"topic {topic!r} has no partition {partition} (it has {len(tps)}: {tps[0].partition}..{tps[-1].partition})"
        )

    def _custom_partition(self, topic: str, tps: tuple[TopicPartition, ...], key) -> TopicPartition:
        all_ids = [tp.partition for tp in tps]
        available = [tp.partition for tp in tps if self._cluster.leader_for(tp) is not None]
        chosen = self._partitioner(None if key is None else bytes(key), all_ids, available)
        return self._explicit_partition(topic, tps, chosen)

    def _next_sticky(self, topic: str, tps: tuple[TopicPartition, ...], previous: TopicPartition | None) -> TopicPartition:
        """A new sticky partition for keyless records: a random one with a leader, not the last."""
        candidates = [tp for tp in tps if self._cluster.leader_for(tp) is not None] or list(tps)
        if previous is not None and len(candidates) > 1:
            candidates = [tp for tp in candidates if tp != previous] or candidates
        tp = candidates[self._rng.randrange(len(candidates))]
        self._sticky[topic] = tp
        return tp


class _Transaction:
    """`async with producer.transaction():` (see Producer.transaction)."""

    __slots__ = ("_producer",)

    def __init__(self, producer: Producer):
        self._producer = producer

    async def __aenter__(self) -> Producer:
        self._producer.begin_transaction()
        return self._producer

    async def __aexit__(self, exc_type, exc, tb) -> None:
        producer = self._producer
        if exc_type is None:
            await producer.commit_transaction()
            return
        txn = producer._txn
        if txn is not None and txn.in_transaction and txn.fatal is None:
            await producer.abort_transaction()  # the exception that ended the block propagates
