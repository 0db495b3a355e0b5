"""The consumer: partition state and decoding, the background fetcher, the Consumer class."""

from client.consumer.consumer import Consumer, ConsumerGroupsNotSupportedError

__all__ = ["Consumer", "ConsumerGroupsNotSupportedError"]
