"""tidelog client SDK: Producer, Consumer and Admin in aiokafka's shape (client.sync: blocking)."""

from client.admin import Admin
from client.consumer import Consumer
from client.producer import Producer
from client.types import (
    BrokerDescription,
    ClusterDescription,
    PartitionDescription,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__all__ = [
    "Admin",
    "Producer",
    "Consumer",
    "TopicPartition",
    "RecordMetadata",
    "Record",
    "TopicDescription",
    "PartitionDescription",
    "ClusterDescription",
    "BrokerDescription",
]
