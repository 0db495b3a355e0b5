"""The consumer: partition state and decoding, the background fetcher, group membership, the Consumer class."""

from client.consumer.consumer import Consumer, ConsumerGroupsNotSupportedError
from client.consumer.group import CommitFailedError, ConsumerRebalanceListener

__all__ = ["CommitFailedError", "Consumer", "ConsumerGroupsNotSupportedError", "ConsumerRebalanceListener"]
