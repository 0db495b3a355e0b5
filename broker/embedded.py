"""A real broker inside the caller's process, for tests: on the running event loop or in a thread.

    async with EmbeddedBroker() as b:              # on the running event loop
        b.bootstrap_servers                        # "127.0.0.1:PORT" (an ephemeral port)

    with ThreadedBroker(num_partitions=3) as b:    # its own event loop in a daemon thread
        b.bootstrap_servers                        # for synchronous code (client.sync, a web app...)

Both run the very `Broker` the daemon runs (broker/server.py), single-node, listening on
127.0.0.1 port 0 unless `listen=` says otherwise. Keyword settings are BrokerConfig settings
(`num_partitions=3`, `auto_create_topics=False`...), validated at construction: an unknown or
invalid one raises `ConfigError` before anything is created. TIDELOG_* environment variables
are ignored, so a developer's shell cannot change what a test runs against.

Without `data_dir` the data lives in a fresh temporary directory (`tidelog-*` under
`tempfile.gettempdir()`) that stop() removes; a `data_dir` the caller passes is kept. stop() is
idempotent, and a start() that fails part-way releases what it took (port, files, temp dir)
before raising. Each object starts once; make a new one (on the same `data_dir`) to restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from broker.config import SETTINGS, BrokerConfig, ConfigError, load_config

START_TIMEOUT_S = 30.0  # a ThreadedBroker start() that takes longer raises BrokerStartTimeout
STOP_TIMEOUT_S = 30.0  # how long ThreadedBroker.stop() waits for its thread
_DEFAULT_LISTEN = "127.0.0.1:0"
_TEMP_PREFIX = "tidelog-"


class BrokerStartTimeout(TimeoutError):
    """A ThreadedBroker was not ready within its start deadline (it has been stopped)."""


def build_config(data_dir: str | Path, settings: dict[str, Any]) -> BrokerConfig:
    """A validated BrokerConfig from keyword settings; ConfigError names a bad one."""
    unknown = sorted(name for name in settings if name not in SETTINGS)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (settings: {', '.join(SETTINGS)})")
    if "data_dir" in settings:
        raise ConfigError("pass data_dir as the data_dir argument, not as a setting")
    flags = {"listen": _DEFAULT_LISTEN, **settings, "data_dir": str(data_dir)}
    return load_config(environ={}, flags=flags)


class EmbeddedBroker:
    """A broker on the running event loop (see the module docstring)."""

    def __init__(self, data_dir: str | Path | None = None, **settings: Any):
        # Validated now (with a placeholder dir) so a bad setting fails before a temp dir exists.
        self.config = build_config(data_dir if data_dir is not None else "<temporary>", settings)
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self._temp_dir: Path | None = None
        self._broker = None  # broker.server.Broker once start() ran
        self._state = "new"

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> EmbeddedBroker:
        if self._state != "new":
            raise RuntimeError(f"EmbeddedBroker.start() called when {self._state}; make a new one to restart")
        self._state = "starting"
        from broker.server import Broker  # the heavy import happens on first start, not on `import broker`

        try:
            if self._given_dir is None:
                self._temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
            self.config = dataclasses.replace(self.config, data_dir=str(self.data_dir))
            self._broker = Broker(self.config)
            await self._broker.start()  # releases its own files and socket if it fails
        except BaseException:
            self._broker = None
            self._remove_temp_dir()
            self._state = "stopped"
            raise
        self._state = "running"
        return self

    async def stop(self) -> None:
        """Graceful stop (Broker.stop), then remove the temporary data dir. Idempotent."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopped"
        try:
            if self._broker is not None:
                await self._broker.stop()
        finally:
            self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- what a test needs ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def data_dir(self) -> Path:
        """The data directory (the temporary one while running, if none was given)."""
        if self._given_dir is not None:
            return self._given_dir
        if self._temp_dir is None:
            raise RuntimeError("the temporary data directory exists only while the broker runs")
        return self._temp_dir

    @property
    def address(self) -> tuple[str, int]:
        if self._broker is None or self._state != "running":
            raise RuntimeError("the broker is not running")
        return self._broker.bound_address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def bootstrap_servers(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    @property
    def broker(self):
        """The underlying broker.server.Broker (stats, connections) while running."""
        if self._broker is None:
            raise RuntimeError("the broker is not running")
        return self._broker


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency wherever it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ThreadedBroker:
    """An EmbeddedBroker on its own event loop in a daemon thread, driven from synchronous code.

    start() blocks until the broker serves (or raises what its start raised, or
    BrokerStartTimeout after `start_timeout_s`); stop() stops the broker gracefully, joins the
    thread and removes the temporary data dir. `loop_factory` picks the thread's event loop
    (default: uvloop when installed, as the daemon does).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        **settings: Any,
    ):
        self._embedded = EmbeddedBroker(data_dir, **settings)  # validates the settings now
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._loop_factory = loop_factory or _new_loop
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._started: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()

    @property
    def config(self) -> BrokerConfig:
        return self._embedded.config

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ThreadedBroker:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("ThreadedBroker.start() called twice; make a new one to restart")
            self._thread = threading.Thread(target=self._main, name="tidelog-broker", daemon=True)
            self._thread.start()
        try:
            self._started.result(timeout=self.start_timeout_s)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise BrokerStartTimeout(f"the broker was not ready within {self.start_timeout_s}s") from None
        except BaseException:
            self.stop()  # joins the thread; the embedded broker already released everything
            raise
        return self

    def _main(self) -> None:
        loop = self._loop_factory()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(loop))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._stop_requested = asyncio.Event()
            self._loop = loop
            if self._started.done():  # stop() came first (a start deadline passed)
                return
        try:
            await self._embedded.start()
        except BaseException as exc:
            with self._lock:
                if not self._started.done():
                    self._started.set_exception(exc)
            return
        try:
            with self._lock:
                abandoned = self._started.done()  # start() gave up meanwhile: stop at once
                if not abandoned:
                    self._started.set_result(None)
            if not abandoned:
                await self._stop_requested.wait()
        finally:
            await self._embedded.stop()

    def stop(self) -> None:
        """Stop the broker, join its thread, remove the temporary data dir. Idempotent."""
        with self._lock:
            thread, loop, event = self._thread, self._loop, self._stop_requested
            if not self._started.done():
                # start() gave up (deadline) or nothing started yet: tell _serve not to serve
                self._started.set_exception(BrokerStartTimeout("stopped before it was ready"))
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        thread.join(self.stop_timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"the broker thread did not stop within {self.stop_timeout_s}s")

    def __enter__(self) -> ThreadedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what a test needs ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._embedded.running

    @property
    def data_dir(self) -> Path:
        return self._embedded.data_dir

    @property
    def address(self) -> tuple[str, int]:
        return self._embedded.address

    @property
    def port(self) -> int:
        return self._embedded.port

    @property
    def bootstrap_servers(self) -> str:
        return self._embedded.bootstrap_servers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The broker's event loop (to schedule work on it with run_coroutine_threadsafe)."""
        if self._loop is None:
            raise RuntimeError("the broker is not started")
        return self._loop
