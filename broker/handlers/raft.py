"""The Raft APIs (Vote, AppendEntries, InstallSnapshot): a peer's Raft message for our driver.

One way: the handler returns None, so no response is sent (Raft answers with messages of its
own, on this broker's connection to the sender). A message that fails the wire checks of
broker/raft/messages.py is dropped with a rate-limited warning and never reaches the core.
"""

from __future__ import annotations

from client.protocol.messages import RaftAppendEntriesRequest, RaftInstallSnapshotRequest, RaftVoteRequest

from broker.handlers import HandlerContext, current_peer
from broker.raft.messages import WireError, message_from_wire


async def handle_raft_message(
    ctx: HandlerContext, request: RaftVoteRequest | RaftAppendEntriesRequest | RaftInstallSnapshotRequest
) -> None:
    try:
        message = message_from_wire(request.message)
    except WireError as exc:
        ctx.warn_bad_input("bad_raft_message", current_peer.get(), detail=str(exc))
        return None
    if message.to != ctx.config.node_id:
        ctx.warn_bad_input("misrouted_raft_message", current_peer.get(), to=message.to, from_id=message.from_id)
        return None
    ctx.metadata.raft_step(message)
    return None
