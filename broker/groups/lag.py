"""Consumer lag as a Prometheus gauge: per group and partition, on the broker that leads it.

Lag is the partition's high watermark minus the group's committed offset. The leader is the one
broker that knows both ends at once (its log, and the committed offset in the metadata image
every broker holds), so each broker reports the partitions it leads and the cluster's series,
summed over brokers, cover every partition once. The controller alone could not: it knows the
end of the logs it leads only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from broker.server import Broker

# Series one scrape reports at most (groups x partitions can grow without bound); the count
# left out is reported in tidelog_consumer_group_lag_untracked.
LAG_SERIES_MAX = 10_000


def group_lag_families(broker: Broker) -> Iterator[Any]:
    metadata, replicas = broker.metadata, broker.replicas
    if metadata is None or replicas is None:
        return
    image, node_id = metadata.image, broker.config.node_id
    lag = GaugeMetricFamily("tidelog_consumer_group_lag", "high watermark minus the group's committed offset, "
                            "for partitions led by this broker (Kafka consumer-lag)", labels=["group", "topic", "partition"])
    series = untracked = 0
    for group, offsets in sorted(image.offsets.items()):
        for (topic, index), committed in sorted(offsets.items()):
            state = image.partition(topic, index)
            partition = replicas.partitions.get((topic, index))
            if state is None or partition is None or state.leader != node_id:
                continue
            if series >= LAG_SERIES_MAX:
                untracked += 1
                continue
            lag.add_metric([group, topic, str(index)], max(0, partition.high_watermark - committed.offset))
            series += 1
    yield lag
    yield GaugeMetricFamily("tidelog_consumer_group_lag_untracked",
                            f"group partitions past the first {LAG_SERIES_MAX} lag series, not reported", value=untracked)
