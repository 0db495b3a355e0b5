"""Request handlers, one module per area, and the dispatcher that routes frames to them.

A handler is `async def handle(ctx: HandlerContext, request) -> Response | None` (None: send
nothing, as for an acks=0 produce). The dispatcher decodes the frame, calls the handler and
frames the response; every failure becomes an error response, never an exception that could
reach the connection or the server:

- the frame decodes but the API key, version or control shape is wrong: the error response
  of the codec (UNSUPPORTED_API, UNSUPPORTED_VERSION, INVALID_REQUEST) and a rate-limited
  warning;
- a handler raises: UNKNOWN_SERVER_ERROR and an error line with the traceback.

Handlers that append (produce) must do so before their first `await`: the connection starts
one task per request in arrival order, and that is what keeps pipelined produces in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from client.protocol.errors import ErrorCode, FrameTooLargeError, ProtocolError
from client.protocol.frames import RequestFrame
from client.protocol.limits import FRAME_BYTES_MAX_CEILING
from client.protocol.messages import (
    ACKS_NONE,
    ApiKey,
    Response,
    SecurityApiKey,
    decode_request,
    encode_error_response,
    encode_response_message,
)

if TYPE_CHECKING:
    from broker.config import BrokerConfig
    from broker.logging import StructuredLogger
    from broker.partitions import ReplicaManager
    from broker.server import MetadataService

# The peer of the request being handled (each request runs in its own task, so its own
# context): lets a handler's warning name the client without threading it through every call.
current_peer: contextvars.ContextVar[str] = contextvars.ContextVar("current_peer", default="unknown")

# The security Session of the connection whose request is being handled (SASL handlers read it).
current_session: contextvars.ContextVar[Any] = contextvars.ContextVar("current_session", default=None)

# A response frame is bounded by what built it (fetch by fetch_bytes_max, metadata by the
# topic count); the encoder only guards the u32 length prefix.
RESPONSE_FRAME_BYTES_MAX = FRAME_BYTES_MAX_CEILING


@dataclass(slots=True)
class HandlerContext:
    """What handlers may use: public objects only, never the server's internals."""

    config: BrokerConfig
    metadata: MetadataService
    replicas: ReplicaManager
    log: StructuredLogger
    warn_bad_input: Callable[..., None]
    served_api_keys: tuple[int, ...] = ()  # filled in by the Dispatcher (ApiVersions lists them)
    security: Any = None  # broker/security/manager.py SecurityManager (SASL handlers, user/ACL admin)


Handler = Callable[[HandlerContext, Any], Awaitable[Response | None]]


def _handlers() -> dict[int, Handler]:
    from broker.handlers import cluster, fetch, groups, meta, offsets, produce, raft, replication, topics, transactions

    return {
        ApiKey.API_VERSIONS: meta.handle_api_versions,
        ApiKey.METADATA: meta.handle_metadata,
        ApiKey.DESCRIBE_TOPIC: meta.handle_describe_topic,
        ApiKey.DESCRIBE_CLUSTER: meta.handle_describe_cluster,
        ApiKey.CREATE_TOPICS: topics.handle_create_topics,
        ApiKey.DELETE_TOPICS: topics.handle_delete_topics,
        ApiKey.ALTER_TOPIC_CONFIGS: topics.handle_alter_topic_configs,
        ApiKey.PRODUCE: produce.handle_produce,
        ApiKey.FETCH: fetch.handle_fetch,
        ApiKey.LIST_OFFSETS: offsets.handle_list_offsets,
        # Broker to broker: the metadata quorum (broker/raft/, broker/controller.py).
        ApiKey.RAFT_VOTE: raft.handle_raft_message,
        ApiKey.RAFT_APPEND_ENTRIES: raft.handle_raft_message,
        ApiKey.RAFT_INSTALL_SNAPSHOT: raft.handle_raft_message,
        ApiKey.BROKER_REGISTRATION: cluster.handle_broker_registration,
        ApiKey.BROKER_HEARTBEAT: cluster.handle_broker_heartbeat,
        ApiKey.DESCRIBE_QUORUM: cluster.handle_describe_quorum,
        ApiKey.OFFSETS_FOR_LEADER_EPOCH: replication.handle_offsets_for_leader_epoch,
        ApiKey.ALTER_PARTITION: replication.handle_alter_partition,
        ApiKey.CONTROLLED_SHUTDOWN: cluster.handle_controlled_shutdown,
        ApiKey.INIT_PRODUCER_ID: transactions.handle_init_producer_id,
        # Transactions (broker/txn_coordinator.py: the coordinator runs on the active controller).
        ApiKey.ADD_PARTITIONS_TO_TXN: transactions.handle_add_partitions_to_txn,
        ApiKey.ADD_OFFSETS_TO_TXN: transactions.handle_add_offsets_to_txn,
        ApiKey.END_TXN: transactions.handle_end_txn,
        ApiKey.TXN_OFFSET_COMMIT: transactions.handle_txn_offset_commit,
        ApiKey.WRITE_TXN_MARKERS: transactions.handle_write_txn_markers,
        # Consumer groups (broker/groups/: the coordinator runs on the active controller).
        ApiKey.FIND_COORDINATOR: groups.handle_find_coordinator,
        ApiKey.JOIN_GROUP: groups.handle_join_group,
        ApiKey.SYNC_GROUP: groups.handle_sync_group,
        ApiKey.HEARTBEAT: groups.handle_heartbeat,
        ApiKey.LEAVE_GROUP: groups.handle_leave_group,
        ApiKey.OFFSET_COMMIT: groups.handle_offset_commit,
        ApiKey.OFFSET_FETCH: groups.handle_offset_fetch,
        ApiKey.LIST_GROUPS: groups.handle_list_groups,
        ApiKey.DESCRIBE_GROUPS: groups.handle_describe_groups,
        **_security_handlers(),
    }


def _security_handlers() -> dict[int, Handler]:
    from broker.handlers import security

    return {
        SecurityApiKey.SASL_HANDSHAKE: security.handle_sasl_handshake,
        SecurityApiKey.SASL_AUTHENTICATE: security.handle_sasl_authenticate,
        SecurityApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: security.handle_describe_user_scram_credentials,
        SecurityApiKey.ALTER_USER_SCRAM_CREDENTIALS: security.handle_alter_user_scram_credentials,
        SecurityApiKey.DESCRIBE_ACLS: security.handle_describe_acls,
        SecurityApiKey.CREATE_ACLS: security.handle_create_acls,
        SecurityApiKey.DELETE_ACLS: security.handle_delete_acls,
    }


class Dispatcher:
    """Routes request frames to handlers and frames their answers (see the module docstring)."""

    def __init__(self, ctx: HandlerContext):
        self.ctx = ctx
        self.handlers = _handlers()
        # Called as observer(api_key, request | None, response | None, elapsed_s) after every
        # request; set by broker/metrics.py when metrics are on. None: nothing is timed.
        self.observer: Callable[[int, Any, Any, float], None] | None = None
        # broker/security/: authentication, ACLs and quotas, consulted for every request of a
        # connection that has a session. None when none of them is on: nothing is checked.
        self.security: Any = ctx.security if ctx.security is not None and ctx.security.checks_requests else None
        ctx.served_api_keys = tuple(sorted(self.handlers))

    async def dispatch(self, frame: RequestFrame, peer: str, session: Any = None) -> Sequence[Any] | None:
        """Encoded response parts for `frame`, or None when no response is due. `session`: the
        connection's security state (broker/security/), None when security is off."""
        # Metrics (broker/metrics.py): one observer call per request, with what it learned.
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        request = response = None
        try:
            correlation_id = frame.correlation_id
            current_peer.set(peer)
            handler = self.handlers.get(frame.api_key)
            try:
                request = decode_request(frame)
                if handler is None:  # known to the codec but not served by this broker yet
                    message = f"api key {frame.api_key} is not served"
                    return self.error_response(correlation_id, ErrorCode.UNSUPPORTED_API, message)
            except ProtocolError as exc:
                self.ctx.warn_bad_input(
                    "bad_request", peer, api_key=frame.api_key, api_version=frame.api_version,
                    error=exc.error_code.name, detail=exc.message,
                )
                return self.error_response(correlation_id, exc.error_code, exc.message)
            security = self.security
            if security is not None and session is not None:
                current_session.set(session)
                refusal = security.admit(session, frame.api_key, request)
                if refusal is not None:  # refused before the handler: nothing appended, nothing created
                    if getattr(request, "acks", None) == ACKS_NONE:
                        return None
                    return self.error_response(correlation_id, refusal[0], refusal[1])
            try:
                response = await handler(self.ctx, request)
                if security is not None and session is not None:
                    delay_s = security.after(session, frame.api_key, frame.frame_bytes, request, response,
                                             time.monotonic())
                    if delay_s:
                        await asyncio.sleep(delay_s)  # a quota: the answer waits (broker/security/quotas.py)
                if response is None:
                    return None
                return encode_response_message(response, correlation_id, RESPONSE_FRAME_BYTES_MAX)
            except FrameTooLargeError as exc:
                self.ctx.log.error("response_too_large", api_key=frame.api_key, peer=peer, detail=exc.message)
                return self.error_response(correlation_id, ErrorCode.UNKNOWN_SERVER_ERROR, "response too large to frame")
            except Exception as exc:
                self.ctx.log.error("handler_failed", exc_info=True, api_key=frame.api_key, peer=peer, error=type(exc).__name__)
                if getattr(request, "acks", None) == ACKS_NONE:
                    return None  # an acks=0 producer reads no responses: one now would break its stream
                return self.error_response(
                    correlation_id, ErrorCode.UNKNOWN_SERVER_ERROR, f"the broker failed on this request: {type(exc).__name__}"
                )
        finally:
            if observer is not None:
                observer(frame.api_key, request, response, time.perf_counter() - started)

    def error_response(self, correlation_id: int, error_code: int, message: str) -> list[Any]:
        return encode_error_response(correlation_id, error_code, message, RESPONSE_FRAME_BYTES_MAX)
