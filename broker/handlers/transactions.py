"""InitProducerId: producer ids for idempotent producers, handed out by the active controller.

A producer id is committed to the metadata log before it is answered (Controller.
allocate_producer_id), so no two producers ever get the same one, across controller failovers
too. Brokers that are not the active controller answer NOT_CONTROLLER (retriable): the SDK sends
this request to the controller named in its metadata and follows a change like Admin does.
Transactional producers (a transactional_id) are not supported yet: refused with a clear error.
"""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from client.protocol.messages import InitProducerIdRequest, InitProducerIdResponse

from broker.controller import ControllerError
from broker.handlers import HandlerContext


async def handle_init_producer_id(ctx: HandlerContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    if request.transactional_id is not None:
        return InitProducerIdResponse(
            error_code=ErrorCode.UNSUPPORTED_VERSION,
            error_message="transactional producers are not supported yet; use enable_idempotence without a transactional_id")
    controller = ctx.metadata.controller
    try:
        producer_id = await controller.allocate_producer_id()
    except ControllerError as exc:
        return InitProducerIdResponse(error_code=exc.code, error_message=exc.message)
    return InitProducerIdResponse(error_code=ErrorCode.NONE, producer_id=producer_id, producer_epoch=0)
