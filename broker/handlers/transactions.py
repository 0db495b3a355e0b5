"""InitProducerId and the transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
TxnOffsetCommit (producer -> transaction coordinator) and WriteTxnMarkers (coordinator ->
partition leader).

InitProducerId without a transactional id hands out a fresh producer id (Controller.
allocate_producer_id): an idempotent producer. With one, the transaction coordinator
(broker/txn_coordinator.py, on the active controller) answers with the transactional id's
producer id and a raised epoch. Brokers that are not the active controller answer
NOT_CONTROLLER / NOT_COORDINATOR (retriable): the SDK sends these requests to the controller
named in its metadata and follows a change.

WriteTxnMarkers is served by every broker for the partitions it leads: each marker is appended
(ReplicaManager.append_txn_marker, before the first await, like a produce) and answered once the
partition's high watermark passes it, i.e. every in-sync replica holds it (acks=all). Markers
from a coordinator older than the newest one this broker knows of (its Raft term, or a newer
coordinator epoch it already took markers from) are refused with TRANSACTION_COORDINATOR_FENCED,
so a deposed controller cannot end a transaction its successor already completed.
"""

from __future__ import annotations

import asyncio

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    EndTxnRequest,
    EndTxnResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    PartitionError,
    TxnMarkerResult,
    TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
    TxnPartitionsResult,
    WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
)

from broker.controller import ControllerError
from broker.handlers import HandlerContext
from broker.txn_coordinator import TransactionCoordinator, TxnError

MARKER_WAIT_MS_MAX = 10_000  # how long a marker waits for the in-sync replicas before answering


def _coordinator(ctx: HandlerContext) -> TransactionCoordinator:
    return ctx.metadata.transactions


def _results(errors: dict[tuple[str, int], ErrorCode]) -> list[TxnPartitionsResult]:
    by_topic: dict[str, list[PartitionError]] = {}
    for (topic, partition), code in sorted(errors.items()):
        by_topic.setdefault(topic, []).append(PartitionError(partition, code))
    return [TxnPartitionsResult(topic, rows) for topic, rows in by_topic.items()]


async def handle_init_producer_id(ctx: HandlerContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    if request.transactional_id is not None:
        try:
            producer_id, epoch = await _coordinator(ctx).init_producer_id(
                request.transactional_id, request.transaction_timeout_ms)
        except TxnError as exc:
            return InitProducerIdResponse(error_code=exc.code, error_message=exc.message)
        return InitProducerIdResponse(producer_id=producer_id, producer_epoch=epoch)
    controller = ctx.metadata.controller
    try:
        producer_id = await controller.allocate_producer_id()
    except ControllerError as exc:
        return InitProducerIdResponse(error_code=exc.code, error_message=exc.message)
    return InitProducerIdResponse(error_code=ErrorCode.NONE, producer_id=producer_id, producer_epoch=0)


async def handle_add_partitions_to_txn(ctx: HandlerContext,
                                       request: AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse:
    try:
        errors = await _coordinator(ctx).add_partitions(
            request.transactional_id, request.producer_id, request.producer_epoch,
            [(row.topic, p) for row in request.topics for p in row.partitions])
    except TxnError as exc:
        return AddPartitionsToTxnResponse(error_code=exc.code, error_message=exc.message)
    return AddPartitionsToTxnResponse(topics=_results(errors))


async def handle_add_offsets_to_txn(ctx: HandlerContext, request: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse:
    try:
        await _coordinator(ctx).add_offsets(request.transactional_id, request.producer_id, request.producer_epoch,
                                            request.group_id)
    except TxnError as exc:
        return AddOffsetsToTxnResponse(error_code=exc.code, error_message=exc.message)
    return AddOffsetsToTxnResponse()


async def handle_txn_offset_commit(ctx: HandlerContext, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse:
    offsets = [(t.topic, p.partition, p.offset, p.metadata) for t in request.topics for p in t.partitions]
    try:
        errors = await _coordinator(ctx).txn_offset_commit(
            request.transactional_id, request.producer_id, request.producer_epoch, request.group_id,
            request.member_id, request.generation, offsets)
    except TxnError as exc:
        return TxnOffsetCommitResponse(error_code=exc.code, error_message=exc.message)
    return TxnOffsetCommitResponse(topics=_results(errors))


async def handle_end_txn(ctx: HandlerContext, request: EndTxnRequest) -> EndTxnResponse:
    try:
        await _coordinator(ctx).end_txn(request.transactional_id, request.producer_id, request.producer_epoch,
                                        request.committed)
    except TxnError as exc:
        return EndTxnResponse(error_code=exc.code, error_message=exc.message)
    return EndTxnResponse()


async def handle_write_txn_markers(ctx: HandlerContext, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse:
    return await write_markers_here(ctx.replicas, _coordinator(ctx), ctx.metadata.driver.raft.term, request)


async def write_markers_here(replicas, coordinator: TransactionCoordinator, known_term: int,
                             request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse:
    """Append each marker to the partitions this broker leads; answer once replicated."""
    fenced = not coordinator.check_coordinator_epoch(request.coordinator_epoch, known_term)
    results: list[TxnMarkerResult] = []
    waiting = []
    for marker in request.markers:
        errors: dict[tuple[str, int], ErrorCode] = {}
        for row in marker.topics:
            for partition in row.partitions:
                key = (row.topic, partition)
                if fenced:
                    errors[key] = ErrorCode.TRANSACTION_COORDINATOR_FENCED
                    continue
                outcome = replicas.append_txn_marker(row.topic, partition, marker.producer_id, marker.producer_epoch,
                                                     marker.committed, request.coordinator_epoch)
                errors[key] = outcome.error
                if outcome.error == ErrorCode.NONE and outcome.next_offset > 0:
                    waiting.append((errors, key, outcome.next_offset))
        results.append((marker.producer_id, errors))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MARKER_WAIT_MS_MAX / 1000
    for errors, key, next_offset in waiting:
        error = await replicas.wait_for_high_watermark(key, next_offset, deadline - loop.time())
        if error != ErrorCode.NONE:
            errors[key] = error  # retried by the coordinator: the marker is not appended twice
    return WriteTxnMarkersResponse(markers=[TxnMarkerResult(pid, _results(errors)) for pid, errors in results])
