"""The producer: accumulator (batches, memory cap, linger), sender (one task), partitioner."""

from client.producer.accumulator import RecordFuture
from client.producer.partitioner import DefaultPartitioner, murmur2
from client.producer.producer import Producer

__all__ = ["Producer", "RecordFuture", "DefaultPartitioner", "murmur2"]
