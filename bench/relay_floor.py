"""The latency floor of the e2e benchmark's shape on this machine, without tidelog.

Three processes, as in `tidelog bench e2e`: a sender writes a 100-byte message with its send
time every 1/rate s over TCP to a relay (where the broker would be), which forwards each message
as it arrives to a receiver over a second connection; the receiver records now - send time.
All three run uvloop (as the broker does) on 127.0.0.1. The percentiles this prints are what
two Python hops cost here before any broker or SDK work: tidelog's e2e figures are read against
them.

    python bench/relay_floor.py --rate 5000 --duration-s 8
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import struct
import time

MESSAGE = struct.Struct("<qq")  # sequence, send time (monotonic ns)
MESSAGE_BYTES = 100


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def relay(port_queue) -> None:
    loop = _loop()

    async def main() -> None:
        downstream: list[asyncio.StreamWriter] = []
        ready = asyncio.Event()

        async def on_receiver(reader, writer):
            downstream.append(writer)
            ready.set()
            await reader.read()

        async def on_sender(reader, writer):
            await ready.wait()
            out = downstream[0]
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                out.write(data)

        receivers = await asyncio.start_server(on_receiver, "127.0.0.1", 0)
        senders = await asyncio.start_server(on_sender, "127.0.0.1", 0)
        port_queue.put((receivers.sockets[0].getsockname()[1], senders.sockets[0].getsockname()[1]))
        await asyncio.sleep(3600)

    loop.run_until_complete(main())


def receiver(port: int, count: int, results) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    buffer = b""
    while len(latencies) < count:
        buffer += sock.recv(65536)
        while len(buffer) >= MESSAGE_BYTES:
            _, sent = MESSAGE.unpack_from(buffer, 0)
            latencies.append(time.monotonic_ns() - sent)
            buffer = buffer[MESSAGE_BYTES:]
    results.put(latencies)


def sender(port: int, count: int, rate: float) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    padding = b"." * (MESSAGE_BYTES - MESSAGE.size)
    interval = 1 / rate
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the send rate
        sock.sendall(MESSAGE.pack(i, time.monotonic_ns()) + padding)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--duration-s", type=float, default=8)
    args = parser.parse_args()
    count = int(args.rate * args.duration_s)
    ports, results = mp.Queue(), mp.Queue()
    relay_proc = mp.Process(target=relay, args=(ports,), daemon=True)
    relay_proc.start()
    receiver_port, sender_port = ports.get(timeout=10)
    receiver_proc = mp.Process(target=receiver, args=(receiver_port, count, results), daemon=True)
    receiver_proc.start()
    time.sleep(0.2)  # the receiver connects before the sender starts (start-up, not measurement)
    sender_proc = mp.Process(target=sender, args=(sender_port, count, args.rate), daemon=True)
    sender_proc.start()
    latencies = sorted(results.get(timeout=args.duration_s + 30)[int(args.rate):])  # the first second dropped (warm-up)
    for proc in (sender_proc, receiver_proc, relay_proc):
        proc.terminate()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1e6

    print(f"relay floor at {args.rate:.0f}/s: p50 {pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms, "
          f"p99.9 {pct(0.999):.3f} ms, max {latencies[-1] / 1e6:.3f} ms ({len(latencies)} samples)")


if __name__ == "__main__":
    main()
