"""A consume-transform-produce pipeline as its own process, for tests/test_transactions_cluster.py.

    python -m tests.txn_pipeline_worker BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP TRANSACTIONAL_ID OUT_FILE

Reads IN_TOPIC as a member of GROUP (static membership, read_committed, no auto-commit) and, per
batch, in one transaction: writes b"out-" + value to the same partition of OUT_TOPIC and commits
the consumed offsets with send_offsets_to_transaction. Appends "committed <records>" to OUT_FILE
after each commit (flushed at once), so the test can kill -9 it in the middle of its work.
"""

from __future__ import annotations

import asyncio
import sys

from client import Consumer, Producer

PROCESSING_DELAY_S = 0.05  # inside each transaction: a kill -9 lands mid-transaction often


def main() -> None:
    bootstrap, in_topic, out_topic, group, transactional_id, path = sys.argv[1:7]
    out = open(path, "a", buffering=1)

    async def run() -> None:
        # The producer first: its InitProducerId fences the previous instance and completes (or
        # aborts) its transaction before the consumer reads the group's committed offsets.
        async with Producer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                            request_timeout_ms=20_000) as producer:
            async with Consumer(in_topic, bootstrap_servers=bootstrap, group_id=group,
                                group_instance_id="pipeline-1", auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed",
                                session_timeout_ms=6000, heartbeat_interval_ms=500) as consumer:
                while True:
                    batch = await consumer.getmany(timeout_ms=200, max_records=20)
                    if not batch:
                        continue
                    async with producer.transaction():
                        for tp, rows in batch.items():
                            for row in rows:
                                await producer.send(out_topic, b"out-" + row.value, partition=tp.partition)
                        await asyncio.sleep(PROCESSING_DELAY_S)
                        await producer.send_offsets_to_transaction(
                            {tp: rows[-1].offset + 1 for tp, rows in batch.items()}, consumer)
                    out.write(f"committed {sum(len(rows) for rows in batch.values())}\n")

    asyncio.run(run())


if __name__ == "__main__":
    main()
