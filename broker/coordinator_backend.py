"""What a coordinator that runs on the active controller (groups, transactions) needs of it."""

from __future__ import annotations

from typing import Awaitable, TypeVar

from client.protocol.errors import ErrorCode

from broker.controller import Controller, ControllerError
from broker.refusals import Refusal

T = TypeVar("T")


class OnActiveController:
    """A coordinator is active exactly while its broker is the active controller (the term
    tells a new activation from the old one); elsewhere it names the broker that is."""

    ROLE = "coordinator"
    ERROR: type[Refusal] = Refusal  # what the coordinator raises (GroupError, TxnError)

    def __init__(self, controller: Controller):
        self.controller = controller

    def active_term(self) -> int:
        return self.controller.active_term

    def not_coordinator(self) -> str:
        leader = self.controller.image.controller_id
        node = self.controller.node_id
        if leader >= 0 and leader != node:
            return f"node {node} is not the {self.ROLE}; node {leader} (the active controller) is"
        return f"node {node} is not the {self.ROLE}: {self.controller.not_controller().message}"

    async def through_controller(self, call: Awaitable[T], failing: str) -> T:
        """Await a controller call; its refusal becomes the coordinator's error, prefixed by
        `failing`, with NOT_CONTROLLER read as NOT_COORDINATOR (the client looks the
        coordinator up again, which finds the new controller)."""
        try:
            return await call
        except ControllerError as exc:
            code = ErrorCode.NOT_COORDINATOR if exc.code == ErrorCode.NOT_CONTROLLER else exc.code
            raise self.ERROR(code, failing + exc.message) from None

    def partition_counts(self) -> dict[str, int]:
        return {name: len(topic.partitions) for name, topic in self.controller.image.topics.items()}
