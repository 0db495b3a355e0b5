"""The producer: accumulator (batches, memory cap, linger), sender (one task), partitioner."""

from client.producer.accumulator import BulkFuture, RecordFuture
from client.producer.partitioner import DefaultPartitioner, murmur2
from client.producer.producer import Producer

__all__ = ["Producer", "RecordFuture", "BulkFuture", "DefaultPartitioner", "murmur2"]
