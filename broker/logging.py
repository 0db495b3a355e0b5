"""Structured logs: one event per line, as `key=value` pairs (default) or JSON objects.

    ts=2026-11-26T07:10:00.123Z level=info event=ready node_id=1 listen=127.0.0.1:40123

Code logs an *event name* plus fields, never a prose sentence to parse later:

    log = get_logger("broker.server")
    log.info("ready", node_id=1, listen="127.0.0.1:40123")

Nothing here runs at import time: `configure()` installs the handler, and only the daemon (or a
test that wants the lines) calls it. An embedded `Broker` logs through the stdlib `logging`
tree like any library, so the host application decides where the lines go.

`RateLimiter` keeps a misbehaving peer from flooding the log: a warning about bad input is
written at most `burst` times per `interval_s` per key, and the next line that gets through
says how many were suppressed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, TextIO

_ROOT = "tidelog"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIELDS_ATTR = "tidelog_fields"


class StructuredLogger:
    """A thin wrapper that turns `log.info("event", k=v)` into a stdlib record carrying the fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def is_enabled_for(self, level: str) -> bool:
        return self._logger.isEnabledFor(_LEVELS[level])

    def debug(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, event, fields, exc_info)

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        self._logger.log(level, event, extra={_FIELDS_ATTR: fields}, exc_info=exc_info, stacklevel=3)


def get_logger(name: str) -> StructuredLogger:
    """A structured logger under the `tidelog` tree (`name` like "broker.server")."""
    return StructuredLogger(logging.getLogger(f"{_ROOT}.{name}"))


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... event=... k=v ...`; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_timestamp(record.created)}", f"level={record.levelname.lower()}", f"event={_format_value(record.getMessage())}"]
        for key, value in getattr(record, _FIELDS_ATTR, {}).items():
            parts.append(f"{key}={_format_value(value)}")
        if record.exc_info:
            parts.append(f"traceback={_format_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the key=value format."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower(), "event": record.getMessage()}
        for key, value in getattr(record, _FIELDS_ATTR, {}).items():
            line[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def configure(level: str = "info", fmt: str = "kv", stream: TextIO | None = None) -> logging.Handler:
    """Send the `tidelog` tree to `stream` (stderr) in `fmt` ("kv" or "json"); returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger(_ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False
    return handler


class RateLimiter:
    """Allow `burst` events per `interval_s` per key; count the rest so the next line can report them."""

    __slots__ = ("_burst", "_interval_s", "_clock", "_windows")

    # Distinct keys remembered; a peer cycling keys cannot grow this without bound.
    KEYS_MAX = 1024

    def __init__(self, burst: int = 5, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[str, list] = {}  # key -> [window_start, allowed, suppressed]

    def allow(self, key: str) -> tuple[bool, int]:
        """(should log, how many were suppressed since the last allowed line for this key)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self._interval_s:
            suppressed = window[2] if window else 0
            if window is None and len(self._windows) >= self.KEYS_MAX:
                self._windows.clear()
            self._windows[key] = [now, 1, 0]
            return True, suppressed
        if window[1] < self._burst:
            window[1] += 1
            suppressed, window[2] = window[2], 0
            return True, suppressed
        window[2] += 1
        return False, 0
