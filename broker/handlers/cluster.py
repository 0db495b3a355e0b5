"""Broker lifecycle and quorum status: BrokerRegistration, BrokerHeartbeat, DescribeQuorum.

Registration and heartbeats are answered by the active controller only (others say
NOT_CONTROLLER, naming the leader they know of). DescribeQuorum is the leader's view of the
metadata quorum (term, commit index, each member's replicated index and lag), for
`tidelog cluster status`. It is answered only after a Raft ReadIndex round confirmed this node
still leads (see handle_describe_quorum).
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from client.protocol.messages import (
    BrokerHeartbeatRequest,
    BrokerHeartbeatResponse,
    BrokerRegistrationRequest,
    BrokerRegistrationResponse,
    ControlledShutdownRequest,
    ControlledShutdownResponse,
    DescribeQuorumRequest,
    DescribeQuorumResponse,
    QuorumReplica,
)

from broker.controller import ControllerError
from broker.handlers import HandlerContext


async def handle_broker_registration(
    ctx: HandlerContext, request: BrokerRegistrationRequest
) -> BrokerRegistrationResponse:
    metadata = ctx.metadata
    try:
        await metadata.register_broker(request.node_id, request.host, request.port, request.incarnation)
    except ControllerError as exc:
        return BrokerRegistrationResponse(error_code=exc.code, error_message=exc.message,
                                          controller_id=metadata.controller_id)
    return BrokerRegistrationResponse(error_code=ErrorCode.NONE, controller_id=metadata.controller_id)


async def handle_broker_heartbeat(ctx: HandlerContext, request: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse:
    metadata = ctx.metadata
    try:
        fenced = metadata.broker_heartbeat(request.node_id, request.incarnation)
    except ControllerError as exc:
        return BrokerHeartbeatResponse(error_code=exc.code, error_message=exc.message,
                                       controller_id=metadata.controller_id)
    return BrokerHeartbeatResponse(error_code=ErrorCode.NONE, controller_id=metadata.controller_id, fenced=fenced)


async def handle_describe_quorum(ctx: HandlerContext, request: DescribeQuorumRequest) -> DescribeQuorumResponse:
    metadata = ctx.metadata
    if not metadata.is_controller:
        refusal = metadata.not_controller()
        return DescribeQuorumResponse(error_code=refusal.code, error_message=refusal.message,
                                      leader_id=metadata.controller_id)
    # Linearizable: a leader deposed behind a partition still believes it leads until check-quorum
    # steps it down, and would report itself as controller with a stale term, commit index and
    # lags. A ReadIndex round makes a majority confirm the leadership first; if it cannot, the
    # answer is NOT_CONTROLLER (retriable: `tidelog cluster status` asks again until its timeout).
    try:
        await metadata.controller.linearizable_read()
    except ControllerError as exc:
        return DescribeQuorumResponse(error_code=exc.code, error_message=exc.message,
                                      leader_id=metadata.controller_id)
    status = metadata.quorum_status()
    voters, observers = [], []
    me = QuorumReplica(status.node_id, status.last_index, 0, "leader", True)
    (voters if status.voter else observers).append(me)
    for node_id, peer in status.peers.items():
        row = QuorumReplica(node_id, peer.match_index, max(0, status.last_index - peer.match_index), peer.state,
                            peer.recent_active)
        (voters if peer.voter else observers).append(row)
    return DescribeQuorumResponse(
        error_code=ErrorCode.NONE, leader_id=status.node_id, term=status.term, commit_index=status.commit,
        last_index=status.last_index, voters=sorted(voters, key=lambda r: r.node_id),
        observers=sorted(observers, key=lambda r: r.node_id),
    )


async def handle_controlled_shutdown(ctx: HandlerContext, request: ControlledShutdownRequest) -> ControlledShutdownResponse:
    metadata = ctx.metadata
    try:
        remaining = await metadata.controller.controlled_shutdown(request.broker_id, request.incarnation)
    except ControllerError as exc:
        return ControlledShutdownResponse(error_code=exc.code, error_message=exc.message,
                                          controller_id=metadata.controller_id)
    return ControlledShutdownResponse(error_code=ErrorCode.NONE, controller_id=metadata.controller_id,
                                      partitions_remaining=remaining)
