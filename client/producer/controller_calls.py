"""One request to the active controller (producer ids, transactions), retried as a client must.

The controller is the broker the latest metadata names; until the metadata names one any
broker is asked (it answers NOT_CONTROLLER, naming none or the right one). Retriable errors (no
controller yet, NOT_CONTROLLER after a failover, a transaction still completing) are retried
after retry_backoff_ms with refreshed metadata, until request_timeout_ms has passed; anything
else is raised at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from client.cluster import Cluster
from client.connection import Connection
from client.errors import TidelogError, TidelogTimeoutError
from client.protocol.errors import ErrorCode


async def call_controller(cluster: Cluster, make: Callable[[], Any], *, request_timeout_ms: float,
                          retry_backoff_ms: float, refusal: Callable[[Any, Connection], TidelogError]) -> Any:
    """The response to `make()` with error_code NONE; `refusal(response, conn)` gives the
    exception for any other answer (raised, or retried when it is retriable)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request_timeout_ms / 1000
    while True:
        try:
            controller_id = cluster.metadata.controller_id
            if controller_id in cluster.metadata.brokers:
                conn = await cluster.connection(controller_id)
            else:
                conn = await cluster.any_connection()
            response = await conn.request(make())
            if response.error_code == ErrorCode.NONE:
                return response
            raise refusal(response, conn)
        except TidelogError as exc:
            if isinstance(exc, TidelogTimeoutError) or not exc.retriable:
                raise
            if loop.time() + retry_backoff_ms / 1000 >= deadline:
                raise
            cluster.request_update()
            await asyncio.sleep(retry_backoff_ms / 1000)
