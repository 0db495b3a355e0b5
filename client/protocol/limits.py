"""Named limits of the wire protocol and their defaults, each with the reason for its value.

Every buffer the codec or its callers fill from the network is bounded by one of these
before memory is spent on it (ARCHITECTURE.md, "Limits everywhere"). Settings that a
deployment may change are `*_DEFAULT`; hard rules of the protocol have no suffix.
"""

from __future__ import annotations

import re

from client.protocol.errors import InvalidTopicNameError

KiB = 1024
MiB = 1024 * KiB

# --- frames --------------------------------------------------------------------------------

# Largest frame a peer may send: a fetch response of FETCH_BYTES_MAX_DEFAULT plus its control part
# fits with room to spare, yet one bad length prefix cannot make a reader reserve gigabytes.
FRAME_BYTES_MAX_DEFAULT = 16 * MiB

# The u32 length prefix itself caps any frame; also the ceiling for a configured frame maximum.
FRAME_BYTES_MAX_CEILING = 2**32 - 1

# --- record batches ------------------------------------------------------------------------

# Largest record batch a broker accepts by default, like Kafka's message.max.bytes (about 1 MiB):
# big enough for real batching, small enough that one producer cannot hog a partition's appends.
BATCH_BYTES_MAX_DEFAULT = 1 * MiB

# Records one batch may claim: a default 1 MiB batch of the smallest records (about 7 bytes each)
# holds about 150 000, so this leaves room for larger configured batches while a forged header
# still cannot make a reader build millions of records or reserve a huge offset range.
RECORDS_PER_BATCH_MAX = 1_000_000

# --- topics and partitions -----------------------------------------------------------------

# Kafka's limit: a partition directory is named "<topic>-<partition>" and must fit in the
# 255-byte file name limit of common file systems.
TOPIC_NAME_LENGTH_MAX = 249

# Only characters that are safe in file names, metric names and URLs on every platform.
TOPIC_NAME_ALLOWED_CHARS = "ASCII letters, digits, '.', '_' and '-'"
_TOPIC_NAME_CHAR = re.compile(r"[A-Za-z0-9._-]")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")

# Bounds metadata responses and per-partition broker state (logs, fetchers, waiting rooms).
PARTITIONS_PER_TOPIC_MAX = 10_000

# Each replica costs one follower fetcher per partition; more than 7 buys no durability in practice.
REPLICATION_FACTOR_MAX = 7

# Key and value bytes of one topic config entry: configs are small settings, not data.
CONFIG_ENTRY_BYTES_MAX = 4 * KiB

# --- requests in flight and timeouts -------------------------------------------------------

# Requests a client pipelines on one connection, like Kafka's max.in.flight.requests.per.connection:
# 5 is the largest value for which an idempotent producer can still keep ordering.
IN_FLIGHT_REQUESTS_MAX_DEFAULT = 5

# How long a client waits for any response, like Kafka's request.timeout.ms.
REQUEST_TIMEOUT_MS_DEFAULT = 30_000

# Largest timeout_ms / max_wait_ms a request may carry: a broker never parks a request longer.
REQUEST_TIMEOUT_MS_MAX = 300_000

# --- fetch ---------------------------------------------------------------------------------

# Bytes of records one fetch response may carry: half of FRAME_BYTES_MAX_DEFAULT so the response,
# with its control part, always fits in one frame (Kafka's 50 MiB fetch.max.bytes would not).
FETCH_BYTES_MAX_DEFAULT = 8 * MiB

# Bytes of records per partition in one fetch, like Kafka's max.partition.fetch.bytes: at least
# one default-sized batch, so a consumer always makes progress.
FETCH_PARTITION_BYTES_MAX_DEFAULT = 1 * MiB

# Long-poll wait when fewer than min_bytes are ready, like Kafka's fetch.max.wait.ms.
FETCH_MAX_WAIT_MS_DEFAULT = 500

# Answer a fetch as soon as any byte is ready: lowest latency by default.
FETCH_MIN_BYTES_DEFAULT = 1

# --- producer ------------------------------------------------------------------------------

# Bytes a producer buffers before send() waits, like Kafka's buffer.memory.
PRODUCER_BUFFER_BYTES_MAX_DEFAULT = 32 * MiB


def validate_topic_name(name: object) -> None:
    """Raise InvalidTopicNameError saying exactly which rule `name` breaks.

    The rules keep a topic name usable as a directory name and a metric label everywhere:
    1 to TOPIC_NAME_LENGTH_MAX characters from [A-Za-z0-9._-], and neither "." nor "..".
    """
    if not isinstance(name, str):
        raise InvalidTopicNameError(f"topic name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidTopicNameError("topic name is empty")
    if name in (".", ".."):
        raise InvalidTopicNameError(f"topic name {name!r} is reserved: it names a directory")
    if len(name) > TOPIC_NAME_LENGTH_MAX:
        raise InvalidTopicNameError(
            f"topic name is {len(name)} characters long; the maximum is {TOPIC_NAME_LENGTH_MAX}"
        )
    if _TOPIC_NAME.fullmatch(name):
        return
    for position, char in enumerate(name):
        if not _TOPIC_NAME_CHAR.fullmatch(char):
            raise InvalidTopicNameError(
                f"topic name {name!r} contains {char!r} at position {position}; "
                f"allowed are {TOPIC_NAME_ALLOWED_CHARS}"
            )
