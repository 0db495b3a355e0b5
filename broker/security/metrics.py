"""Prometheus families for security and abuse limits, read at scrape time from SecurityStats."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily


def security_families(broker: Any) -> Iterator[Any]:
    security = broker.security
    if security is None:
        return
    stats = security.stats
    yield CounterMetricFamily("tidelog_authentications_succeeded", "SCRAM logins that succeeded",
                              value=stats.authentications_succeeded)
    yield CounterMetricFamily("tidelog_authentications_failed", "SCRAM logins refused (wrong user or password, bad message)",
                              value=stats.authentications_failed)
    yield CounterMetricFamily("tidelog_unauthenticated_requests_refused",
                              "requests refused because the connection had not logged in", value=stats.unauthenticated_refused)
    denied = CounterMetricFamily("tidelog_authorization_denied", "requests (or metadata topics) refused by ACLs, by resource type",
                                 labels=["resource"])
    for resource in ("topic", "group", "cluster", "transactional_id"):
        denied.add_metric([resource], getattr(stats, f"{resource}_denied"))
    yield denied
    throttled = CounterMetricFamily("tidelog_quota_throttled_responses", "responses held back by a byte-rate quota",
                                    labels=["kind"])
    throttle_ms = CounterMetricFamily("tidelog_quota_throttle_time_ms", "total time responses were held by quotas",
                                      labels=["kind"])
    for kind in ("produce", "fetch"):
        throttled.add_metric([kind], security.quotas.throttled_responses[kind])
        throttle_ms.add_metric([kind], security.quotas.throttled_ms_total[kind])
    yield throttled
    yield throttle_ms
    yield CounterMetricFamily("tidelog_connections_refused_per_ip", "connections closed on accept: connections_per_ip_max",
                              value=stats.connections_refused_per_ip)
    yield CounterMetricFamily("tidelog_in_flight_pauses", "times a connection's reads paused at in_flight_requests_max",
                              value=stats.in_flight_pauses)
    yield CounterMetricFamily("tidelog_frames_too_large", "connections closed for a frame above frame_bytes_max",
                              value=stats.frames_too_large)
    yield CounterMetricFamily("tidelog_slow_frames_closed", "connections closed for a frame not whole within "
                              "request_read_timeout_ms (slow-loris)", value=stats.slow_frames_closed)
