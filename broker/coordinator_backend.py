"""What a coordinator that runs on the active controller (groups, transactions) needs of it."""

from __future__ import annotations

from broker.controller import Controller


class OnActiveController:
    """A coordinator is active exactly while its broker is the active controller (the term
    tells a new activation from the old one); elsewhere it names the broker that is."""

    ROLE = "coordinator"

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

    def partition_counts(self) -> dict[str, int]:
        return {name: len(topic.partitions) for name, topic in self.controller.image.topics.items()}
