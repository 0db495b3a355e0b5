"""A consumer-group member as its own process, for tests/test_groups_processes.py.

    python -m tests.group_worker BOOTSTRAP GROUP TOPIC OUT_FILE [SESSION_TIMEOUT_MS]

Appends one line per event to OUT_FILE (flushed at once, so a kill -9 loses nothing written):
    ready <wall ms>
    assigned <wall ms> <p,p,...>        revoked <wall ms> <p,p,...>
    record <wall ms> <partition> <offset>
Each batch is "processed" (written) and then committed: at-least-once. SIGTERM stops cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from client import Consumer, ConsumerRebalanceListener


def main() -> None:
    bootstrap, group, topic, path = sys.argv[1:5]
    session_timeout_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    out = open(path, "a", buffering=1)

    def note(*fields: object) -> None:
        out.write(" ".join(str(f) for f in fields) + "\n")

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            note("revoked", time.time_ns() // 1_000_000, ",".join(str(tp.partition) for tp in sorted(revoked)))

        def on_partitions_assigned(self, assigned):
            note("assigned", time.time_ns() // 1_000_000, ",".join(str(tp.partition) for tp in sorted(assigned)))

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumer = Consumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                            enable_auto_commit=False, session_timeout_ms=session_timeout_ms,
                            heartbeat_interval_ms=max(100, session_timeout_ms // 10), client_id="worker")
        consumer.subscribe([topic], listener=Listener())
        await consumer.start()
        note("ready", time.time_ns() // 1_000_000)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                if not batches:
                    continue
                now = time.time_ns() // 1_000_000
                out.write("".join(f"record {now} {r.partition} {r.offset}\n"
                                  for records in batches.values() for r in records))
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        finally:
            await consumer.stop()
            note("stopped", time.time_ns() // 1_000_000)

    asyncio.run(run())


if __name__ == "__main__":
    main()
