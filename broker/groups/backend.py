"""The group coordinator's view of the controller, and its wiring into a broker."""

from __future__ import annotations

from typing import Iterable

from broker.controller import Controller
from broker.coordinator_backend import OnActiveController
from broker.groups.assignors import TP
from broker.groups.coordinator import GroupCoordinator, GroupError, GroupSettings
from broker.logging import get_logger


class ControllerBackend(OnActiveController):
    """GroupBackend over the metadata controller: offsets live in its image and are committed
    through its Raft log; the coordinator is active exactly while the controller is."""

    ROLE = "group coordinator"
    ERROR = GroupError

    def committed(self, group: str) -> dict[TP, tuple[int, str]]:
        offsets = self.controller.image.offsets.get(group, {})
        return {tp: (o.offset, o.metadata) for tp, o in offsets.items()}

    def groups_with_offsets(self) -> Iterable[str]:
        return [group for group, offsets in self.controller.image.offsets.items() if offsets]

    async def commit(self, records: list[list]) -> None:
        await self.through_controller(self.controller.commit_records(records), "offsets not committed: ")


def group_coordinator(controller: Controller, config) -> GroupCoordinator:
    """The coordinator a broker serves group APIs with (broker/server.py)."""
    settings = GroupSettings(
        min_session_timeout_ms=config.group_min_session_timeout_ms,
        max_session_timeout_ms=config.group_max_session_timeout_ms,
        group_max_size=config.group_max_size,
        groups_max=config.groups_max,
        rejoin_grace_ms=config.group_rejoin_grace_ms,
        offset_metadata_bytes_max=config.offset_metadata_bytes_max,
    )
    return GroupCoordinator(ControllerBackend(controller), settings, clock=controller.clock,
                            log=get_logger("broker.groups"))
