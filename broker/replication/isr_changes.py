"""A partition leader's ISR changes, sent to the controller (AlterPartition).

The replica manager `submit`s each `IsrProposal` its leader states make (a follower fell behind
or caught up). Proposals waiting when the previous request returns go out together in one
request, so a broker with many partitions sends few requests. A proposal the controller refused,
or that got no answer, is handed back to the leader state (`isr_change_failed`) after
`retry_ms`, so it may propose again without hammering a controller that is failing over. A
granted one needs nothing here: the leader applies the new ISR when the committed change reaches
its metadata image, never before (the controller's commit is the only source of truth).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from client.protocol.errors import ErrorCode
from client.tasks import cancel_and_wait

from broker.controller import ControllerError
from broker.logging import StructuredLogger, get_logger
from broker.replication.leader_state import IsrProposal

PartitionKey = tuple[str, int]
# (topic, partition, leader_epoch, partition_epoch, isr) -> (error, message) per change, in order.
SendChanges = Callable[[list[tuple[str, int, int, int, list[int]]]], Awaitable[list[tuple[ErrorCode, str | None]]]]


class IsrChangeSender:
    def __init__(self, replicas: Any, send: SendChanges, *, retry_ms: int, log: StructuredLogger | None = None):
        self.replicas = replicas  # broker.partitions.ReplicaManager
        self.send = send
        self.retry_s = retry_ms / 1000
        self.log = log or get_logger("broker.replication")
        self.sent = 0
        self.refused = 0
        self._queue: dict[PartitionKey, IsrProposal] = {}
        self._task: asyncio.Task | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def submit(self, key: PartitionKey, proposal: IsrProposal) -> None:
        self._queue[key] = proposal
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tidelog-isr-changes")

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, {}
            changes = [(key[0], key[1], p.leader_epoch, p.partition_epoch if p.partition_epoch is not None else -1,
                        list(p.isr)) for key, p in batch.items()]
            try:
                outcomes = await self.send(changes)
            except ControllerError as exc:
                outcomes = [(exc.code, exc.message)] * len(changes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not strand the proposals: they are retried
                self.log.error("isr_change_send_failed", exc_info=True)
                outcomes = [(ErrorCode.UNKNOWN_SERVER_ERROR, str(exc))] * len(changes)
            self.sent += 1
            for (key, proposal), (code, message) in zip(batch.items(), outcomes):
                if code != ErrorCode.NONE:
                    self.refused += 1
                    self.log.info("isr_change_refused", topic=key[0], partition=key[1], error=code.name,
                                  detail=message or "", isr=",".join(map(str, proposal.isr)))
                    self._later(key, proposal)

    def _later(self, key: PartitionKey, proposal: IsrProposal) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.replicas.isr_change_failed(key, proposal)

        handle = loop.call_later(self.retry_s, fire)
        self._timers.add(handle)

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await cancel_and_wait(self._task)
