"""Run a `Broker` as a process: logging, uvloop, signals, exit status.

- Logs go to stderr as key=value lines (or JSON with log_format=json). Exactly one line has
  `event=ready`, written once the broker serves, with the bound address:
      ts=... level=info event=ready node_id=1 listen=127.0.0.1:40123 data_dir=/var/lib/tidelog
- SIGTERM or SIGINT: graceful stop (Broker.stop: no new connections or requests, requests in
  progress finish within shutdown_timeout_ms, logs flushed, clean-shutdown markers written),
  then exit 0. A second signal during the stop exits at once with status 1.
- A start-up failure (address in use, data directory locked, storage error) logs
  `event=start_failed` and exits 1.
- With `metrics` set, /metrics, /healthz and /readyz are served on it (broker/metrics.py),
  bound before storage opens; the ready line then carries `metrics=HOST:PORT`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from broker import logging as blog
from broker.config import BrokerConfig
from broker.server import Broker, BrokerStartError
from storage.errors import StorageError

EXIT_OK = 0
EXIT_FAILED = 1


def _raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every partition keeps segment files
    open, and every connection is a socket (Kafka asks operators for the same). Best effort."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        return soft
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without the limit
        return -1


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(config: BrokerConfig) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit status."""
    blog.configure(config.log_level, config.log_format)
    _raise_open_files_limit()
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(serve(config))


async def serve(config: BrokerConfig) -> int:
    log = blog.get_logger("broker.daemon")
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    received: list[str] = []

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        if len(received) > 1:
            log.warning("forced_exit", signal=received[-1])
            os._exit(EXIT_FAILED)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    broker = Broker(config)
    metrics = metrics_server = None
    try:
        if config.metrics:  # bound first: a bad metrics address fails before storage is opened
            metrics, metrics_server = await _start_metrics(broker, config.metrics)
        await broker.start()
    except (BrokerStartError, StorageError, OSError) as exc:
        log.error("start_failed", error=type(exc).__name__, detail=str(exc))
        if metrics_server is not None:
            await metrics_server.stop()
        return EXIT_FAILED
    if metrics is not None:
        metrics.attach()
        metrics.ready = True
    host, port = broker.bound_address
    log.info(
        "ready", node_id=config.node_id, listen=f"{host}:{port}",
        advertise="%s:%d" % config.advertised(port), data_dir=os.path.abspath(config.data_dir), pid=os.getpid(),
        loop=type(loop).__module__.split(".")[0],
        metrics="%s:%d" % metrics_server.bound_address if metrics_server is not None else "off",
    )
    await stop_requested.wait()
    log.info("stopping", signal=received[0] if received else "none")
    if metrics is not None:
        metrics.ready = False  # /readyz answers 503 while the broker drains
    await broker.stop()
    if metrics_server is not None:
        await metrics_server.stop()
    log.info("stopped", node_id=config.node_id)
    return EXIT_OK


async def _start_metrics(broker: Broker, address: str):
    """The Prometheus endpoint (/metrics, /healthz, /readyz) on `address`; see broker/metrics.py."""
    from broker.metrics import BrokerMetrics, MetricsServer

    host, _, port = address.rpartition(":")
    metrics = BrokerMetrics(broker, process=True)
    server = MetricsServer(metrics, host, int(port))
    try:
        await server.start()
    except OSError as exc:
        raise BrokerStartError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    return metrics, server
