"""Metrics and readiness of the metadata quorum: what the Raft driver and the metadata image say.

    metrics.collector.extra.append(lambda: quorum_families(broker))   # broker/metrics.py does this
    metrics.ready_checks.append(lambda: metadata_ready_reason(broker))

Read at scrape time from live state, like the rest of broker/metrics.py; nothing is counted on
any hot path. Every broker reports its own view (term, leader, commit and applied index); the
leader alone knows how far each other node's log is behind its own (`tidelog_raft_peer_lag_entries`),
and the active controller is the broker with `tidelog_active_controller` 1, so
`sum(tidelog_active_controller)` is 1 in a healthy cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from broker.server import Broker

# The roles a Raft node can be in (broker/raft/state.py Role values): each is a series of
# tidelog_raft_role, 1 for the current one, so a dashboard sees changes as well as the state.
RAFT_ROLES = ("follower", "pre_candidate", "candidate", "leader")
NO_LEADER_ID = -1


def quorum_families(broker: Broker) -> Iterator[Any]:
    """The Raft node's state, the controller's, and broker counts from the metadata image."""
    metadata = broker.metadata
    if metadata is None:  # not started yet (recovering logs) or stopped
        return
    driver = metadata.driver
    status = driver.status()
    applied = driver.applied_index
    yield GaugeMetricFamily("tidelog_raft_term", "current Raft term of this node (Kafka current-epoch)", value=status.term)
    leader = status.leader_id if status.leader_id is not None else NO_LEADER_ID
    yield GaugeMetricFamily("tidelog_raft_leader_id", "node id of the Raft leader, the active controller, "
                            "as this node knows it; -1 when there is none (Kafka current-leader)", value=leader)
    role = GaugeMetricFamily("tidelog_raft_role", "1 for this node's current Raft role (Kafka current-state)", labels=["role"])
    for name in RAFT_ROLES:
        role.add_metric([name], int(status.role == name))
    yield role
    yield GaugeMetricFamily("tidelog_raft_voter", "1 if this node votes in the metadata quorum, 0 for an observer", value=int(status.voter))
    yield GaugeMetricFamily("tidelog_raft_commit_index", "highest metadata log index known committed (Kafka high-watermark)", value=status.commit)
    yield GaugeMetricFamily("tidelog_raft_applied_index", "highest metadata log index applied to this broker's "
                            "metadata image (Kafka last-applied-record-offset)", value=applied)
    yield GaugeMetricFamily("tidelog_raft_apply_lag_entries", "committed metadata entries not yet applied here "
                            "(commit index minus applied index)", value=max(0, status.commit - applied))
    yield GaugeMetricFamily("tidelog_raft_last_index", "last index of this node's metadata log (Kafka log-end-offset)", value=status.last_index)
    yield GaugeMetricFamily("tidelog_raft_snapshot_index", "index the latest metadata snapshot covers", value=status.snapshot_index)
    peer_lag = GaugeMetricFamily("tidelog_raft_peer_lag_entries", "on the Raft leader: its last index minus the index "
                                 "each other node is known to hold", labels=["peer", "voter"])
    for node_id, peer in sorted(status.peers.items()):
        if node_id != status.node_id:
            peer_lag.add_metric([str(node_id), str(peer.voter).lower()], max(0, status.last_index - peer.match_index))
    yield peer_lag
    yield GaugeMetricFamily("tidelog_active_controller", "1 on the broker that is the active controller "
                            "(Kafka ActiveControllerCount): sum over brokers should be 1", value=int(metadata.is_controller))
    brokers = GaugeMetricFamily("tidelog_brokers", "registered brokers by state, from this broker's metadata image "
                                "(Kafka ActiveBrokerCount, FencedBrokerCount): use max over brokers", labels=["state"])
    registered = metadata.image.brokers.values()
    fenced = sum(1 for b in registered if b.fenced)
    brokers.add_metric(["active"], len(registered) - fenced)
    brokers.add_metric(["fenced"], fenced)
    yield brokers
    yield from _group_counts(metadata)


def _group_counts(metadata: Any) -> Iterator[Any]:
    """Consumer groups by state, on the active controller (which runs the group coordinator):
    groups with members (Stable, Reconciling) and groups with only committed offsets (Empty).
    Other brokers report no series, so `sum` over brokers counts each group once (Kafka NumGroups)."""
    from broker.groups.coordinator import GroupError

    family = GaugeMetricFamily("tidelog_consumer_groups", "consumer groups by state, on the active controller "
                               "(Kafka NumGroups, NumGroupsStable, NumGroupsEmpty)", labels=["state"])
    coordinator = metadata.groups
    if coordinator is not None and metadata.is_controller:
        try:
            rows = coordinator.list_groups()
        except GroupError:  # just elected: the coordinator is not active yet
            rows = []
        counts = {"Stable": 0, "Reconciling": 0, "Empty": 0}
        for _, state, _ in rows:
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
    yield family


def metadata_ready_reason(broker: Broker) -> str | None:
    """None once this broker has caught up with the cluster's metadata: its own registration
    (this incarnation) is applied to its image and the controller has not fenced it. A quorum
    of one registers before it serves, so it is ready at once. Otherwise a short reason."""
    metadata = broker.metadata
    if metadata is None:
        return "stopped"
    if metadata.alone:
        return None
    lifecycle = metadata.lifecycle
    if not lifecycle.registered:
        return "not registered with the controller yet"
    me = metadata.image.brokers.get(metadata.node_id)
    if me is None or me.incarnation != lifecycle.incarnation:
        return "catching up with the metadata log"
    if me.fenced or lifecycle.fenced:
        return "fenced by the controller"
    return None
