"""Which partition a record goes to.

Keyed records: murmur2 of the key bytes, the same hash and arithmetic as Kafka's Java client
(`Utils.toPositive(Utils.murmur2(key)) % numPartitions`), so a key lands on the partition a
Kafka user expects. Keyless records are handled by the accumulator (sticky per batch), not here.

A custom partitioner is any callable `(key_bytes, all_partitions, available_partitions) -> int`,
aiokafka's signature; `key_bytes` is None for keyless records.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

Partitioner = Callable[[bytes | None, Sequence[int], Sequence[int]], int]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF

# Keys repeat (customer ids, device ids); remembering recent hashes skips the pure-Python
# loop. The cache is cleared when full, so its memory stays bounded.
_HASH_CACHE_ENTRIES_MAX = 16_384
_hash_cache: dict[bytes, int] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c) as a signed 32-bit int, like Utils.murmur2 in Java."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length & ~3
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partition_count: int) -> int:
    """Kafka's default keyed placement: the positive murmur2 hash modulo the partition count."""
    h = _hash_cache.get(key)
    if h is None:
        if len(_hash_cache) >= _HASH_CACHE_ENTRIES_MAX:
            _hash_cache.clear()
        h = _hash_cache[key] = murmur2(key) & 0x7FFFFFFF
    return h % partition_count


class DefaultPartitioner:
    """aiokafka-compatible callable: murmur2 for keys, a random available partition otherwise."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return self._rng.choice(available or all_partitions)
        return all_partitions[partition_for_key(key, len(all_partitions))]
