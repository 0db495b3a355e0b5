"""tidelog client SDK: Producer, Consumer and Admin in aiokafka's shape (client.sync: blocking).

Names are imported on first use (PEP 562), so `import client.protocol.records` (which the
broker and storage do) does not load the whole SDK: that keeps a broker process's start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Admin": "client.admin",
    "Consumer": "client.consumer",
    "ConsumerRebalanceListener": "client.consumer",
    "Producer": "client.producer",
    "BrokerDescription": "client.types",
    "ClusterDescription": "client.types",
    "GroupDescription": "client.types",
    "MemberDescription": "client.types",
    "PartitionDescription": "client.types",
    "Record": "client.types",
    "RecordMetadata": "client.types",
    "TopicDescription": "client.types",
    "TopicPartition": "client.types",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from client.admin import Admin
    from client.consumer import Consumer, ConsumerRebalanceListener
    from client.producer import Producer
    from client.types import (
        BrokerDescription,
        ClusterDescription,
        GroupDescription,
        MemberDescription,
        PartitionDescription,
        Record,
        RecordMetadata,
        TopicDescription,
        TopicPartition,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
