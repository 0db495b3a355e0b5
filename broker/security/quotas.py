"""Byte-rate quotas per principal: produce bytes/s in, fetch bytes/s out.

Each (principal, kind) has a `ready_at` time: every request pushes it by bytes / rate, and its
response waits until then. Bytes answered by time t therefore never exceed rate x t (plus one
request), and a client that keeps sending converges on the rate exactly. Nothing is dropped: a
throttled produce is already appended, only its answer waits (Kafka delays it the same way and
says so in throttle_time_ms); the producer, which waits for answers before sending more to the
partition, slows to the rate.

Credit is short: ready_at may lag `now` by at most QUOTA_CREDIT_MS, enough to give back the
round trip between an answer and the client's next request (without it a sequential client
would get noticeably less than its rate), never enough for a burst after a long pause. Entries of principals idle for a minute are forgotten (bounded memory).
"""

from __future__ import annotations

from dataclasses import dataclass

PRODUCE, FETCH = "produce", "fetch"
QUOTA_CREDIT_MS = 100
QUOTA_DELAY_MS_MAX = 30_000  # one response is never held longer than this, whatever its size
_FORGET_AFTER_S = 60.0
_TRACKED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Quota:
    produce_bytes_per_s: int = 0  # 0: unlimited
    fetch_bytes_per_s: int = 0


def parse_quota_overrides(text: str | None) -> dict[str, Quota]:
    """"User:alice=produce:1048576/fetch:2097152,User:bob=fetch:0" -> {principal: Quota}.
    Raises ValueError naming the bad part."""
    result: dict[str, Quota] = {}
    if not text:
        return result
    for item in text.split(","):
        principal, sep, limits = item.strip().partition("=")
        if not sep or not principal.startswith("User:") or len(principal) <= 5:
            raise ValueError(f"{item.strip()!r} is not User:<name>=produce:<bytes/s>/fetch:<bytes/s>")
        values = {PRODUCE: 0, FETCH: 0}
        for limit in limits.split("/"):
            kind, colon, number = limit.partition(":")
            if kind not in values or not colon or not number.isdigit():
                raise ValueError(f"{limit!r} in {item.strip()!r} is not produce:<bytes/s> or fetch:<bytes/s>")
            values[kind] = int(number)
        result[principal] = Quota(values[PRODUCE], values[FETCH])
    return result


class QuotaManager:
    """Decides how long to hold a response (see the module docstring)."""

    def __init__(self, default: Quota, overrides: dict[str, Quota], exempt: frozenset[str]):
        self.default = default
        self.overrides = overrides
        self.exempt = exempt
        self._ready_at: dict[tuple[str, str], float] = {}
        self._last_sweep = 0.0
        self.throttled_ms_total = {PRODUCE: 0, FETCH: 0}
        self.throttled_responses = {PRODUCE: 0, FETCH: 0}

    @property
    def active(self) -> bool:
        return bool(self.default.produce_bytes_per_s or self.default.fetch_bytes_per_s or self.overrides)

    def rate(self, principal: str, kind: str) -> int:
        quota = self.overrides.get(principal, self.default)
        return quota.produce_bytes_per_s if kind == PRODUCE else quota.fetch_bytes_per_s

    def record(self, principal: str, kind: str, nbytes: int, now: float) -> float:
        """Seconds to hold the response to a request of `nbytes` (0.0: answer now)."""
        if principal in self.exempt or nbytes <= 0:
            return 0.0
        rate = self.rate(principal, kind)
        if rate <= 0:
            return 0.0
        if now - self._last_sweep > _FORGET_AFTER_S or len(self._ready_at) > _TRACKED_MAX:
            self._sweep(now)
        key = (principal, kind)
        ready_at = max(self._ready_at.get(key, now), now - QUOTA_CREDIT_MS / 1000) + nbytes / rate
        self._ready_at[key] = ready_at
        delay = min(ready_at - now, QUOTA_DELAY_MS_MAX / 1000)
        if delay > 0.0005:
            self.throttled_responses[kind] += 1
            self.throttled_ms_total[kind] += int(delay * 1000)
            return delay
        return 0.0

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        self._ready_at = {k: t for k, t in self._ready_at.items() if t > now - _FORGET_AFTER_S}
        if len(self._ready_at) > _TRACKED_MAX:
            self._ready_at.clear()
