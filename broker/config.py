"""Broker settings: one table, read from defaults < TOML file < TIDELOG_<SETTING> env < flags.

Every setting has a name with its unit, a default, a one-line meaning and a validator. An
unknown key or an invalid value stops start-up with one line naming the setting
(`ConfigError`), before anything is opened or bound.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

MiB = 1 << 20


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the setting and the source."""


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _minus_one_or_positive(value: int) -> str | None:
    return None if value == -1 or value > 0 else "must be -1 (unlimited) or > 0"


def _optional_positive(value: int | None) -> str | None:
    return None if value is None or value > 0 else "must be > 0 or unset"


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT with a port from 0 to 65535"
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _voters(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_voters(value)
    except ValueError as exc:
        return str(exc)
    return None


def _readable_file(value: str | None) -> str | None:
    if value is None:
        return None
    return None if os.path.isfile(value) and os.access(value, os.R_OK) else "is not a readable file"


def _principals(value: str | None) -> str | None:
    for item in (value or "").split(","):
        item = item.strip()
        if item and (not item.startswith("User:") or len(item) <= 5):
            return f"lists {item!r}, which is not User:<name>"
    return None


def _quota_overrides(value: str | None) -> str | None:
    from broker.security.quotas import parse_quota_overrides

    try:
        parse_quota_overrides(value)
    except ValueError as exc:
        return f"is wrong: {exc}"
    return None


def setting(default: Any, meaning: str, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"meaning": meaning, "check": check})


@dataclass(frozen=True)
class BrokerConfig:
    node_id: int = setting(1, "this broker's id in the cluster", _non_negative)
    listen: str = setting("127.0.0.1:9292", "HOST:PORT the broker listens on (port 0 picks a free one)", _host_port)
    advertise: str | None = setting(None, "HOST:PORT clients and peers are told to use (default: listen)", _host_port)
    data_dir: str = setting("./tidelog-data", "directory holding the partition logs and metadata")
    voters: str | None = setting(None, "Raft voters as ID@HOST:PORT,... (default: this node alone)", _voters)
    metrics: str | None = setting(None, "HOST:PORT of the Prometheus /metrics endpoint (default: off)", _host_port)
    log_level: str = setting("info", "debug, info, warning or error", _one_of("debug", "info", "warning", "error"))
    log_format: str = setting("kv", "kv (key=value lines) or json", _one_of("kv", "json"))
    # Limits, each checked before memory is spent.
    frame_bytes_max: int = setting(16 * MiB, "largest request frame accepted; a bigger length prefix closes the connection", _positive)
    batch_bytes_max: int = setting(1 * MiB, "largest record batch accepted (Kafka's message.max.bytes)", _positive)
    connections_max: int = setting(1000, "open client connections at once; more are closed on accept", _positive)
    connection_idle_ms: int = setting(600_000, "close a connection idle this long (Kafka's connections.max.idle.ms)", _positive)
    connection_buffer_bytes_max: int = setting(4 * MiB, "buffered unsent/unparsed bytes per connection before reads pause", _positive)
    in_flight_requests_max: int = setting(100, "requests in progress per connection before reads pause", _positive)
    fetch_wait_ms_max: int = setting(30_000, "ceiling on a fetch's max_wait_ms", _positive)
    fetch_bytes_max: int = setting(64 * MiB, "ceiling on a fetch response's bytes (Kafka's fetch.max.bytes)", _positive)
    shutdown_timeout_ms: int = setting(30_000, "how long a graceful stop waits for in-flight requests", _positive)
    # Topics.
    auto_create_topics: bool = setting(True, "create a topic on first produce or metadata request for it")
    num_partitions: int = setting(1, "partitions of an auto-created topic", _positive)
    default_replication_factor: int = setting(1, "replicas of an auto-created topic", _positive)
    min_insync_replicas: int = setting(1, "fewest in-sync replicas for an acks=all write", _positive)
    # Replication (broker/partitions.py, broker/replication/).
    replica_lag_time_max_ms: int = setting(10_000, "a follower not caught up for this long leaves the ISR", _positive)
    replica_fetch_wait_max_ms: int = setting(500, "how long a follower's fetch waits at the leader for new data", _positive)
    replica_fetch_bytes_max: int = setting(8 * MiB, "record bytes a follower's fetch asks for, all partitions together", _positive)
    replica_fetch_partition_bytes_max: int = setting(1 * MiB, "record bytes per partition in a follower's fetch (at least one batch)", _positive)
    replica_fetch_backoff_ms: int = setting(200, "a follower's pause after a failed fetch before it tries again", _positive)
    producer_ids_per_partition_max: int = setting(10_000, "idempotent producers remembered per partition; the least recently written are forgotten past it", _positive)
    # Transactions (broker/txn_coordinator.py, on the active controller).
    transaction_max_timeout_ms: int = setting(900_000, "the longest transaction timeout a producer may ask for (else INVALID_TRANSACTION_TIMEOUT)", _positive)
    transactional_ids_max: int = setting(100_000, "transactional ids the coordinator keeps at once (a new one past it is refused)", _positive)
    transactions_ongoing_max: int = setting(10_000, "open transactions the coordinator holds at once (past it a new one is refused, retriable)", _positive)
    transaction_partitions_max: int = setting(1000, "partitions plus groups, and offsets, one transaction may hold", _positive)
    transaction_marker_delay_ms: int = setting(0, "tests only: wait this long between a transaction's decision and its markers", _non_negative)
    controlled_shutdown_timeout_ms: int = setting(10_000, "on a graceful stop, how long to wait for the controller to move this broker's leaderships away", _positive)
    auto_leader_rebalance: bool = setting(True, "move leadership back to each partition's preferred (first) replica once it is in sync")
    # Log defaults (topics may override them).
    segment_bytes_max: int = setting(1 << 30, "roll the active segment past this size", _positive)
    segment_ms_max: int = setting(7 * 24 * 3600 * 1000, "roll the active segment past this age", _positive)
    index_interval_bytes: int = setting(4096, "log bytes between two offset-index entries", _positive)
    retention_bytes: int = setting(-1, "per-partition size above which old segments are deleted (-1: unlimited)", _minus_one_or_positive)
    retention_ms: int = setting(7 * 24 * 3600 * 1000, "age past which old segments are deleted (-1: unlimited)", _minus_one_or_positive)
    retention_check_interval_ms: int = setting(300_000, "how often retention runs in the background", _positive)
    flush_messages: int | None = setting(None, "fsync after this many records (1: before every acknowledgement; unset: rely on replication)", _optional_positive)
    flush_ms: int | None = setting(None, "fsync data older than this (unset: never by time)", _optional_positive)
    # The metadata quorum (embedded Raft controller, broker/controller.py).
    raft_tick_ms: int = setting(50, "one Raft tick: the unit of election and heartbeat timing", _positive)
    raft_election_ticks: int = setting(10, "ticks without a leader before a voter campaigns (randomised up to twice this)", _positive)
    raft_heartbeat_ticks: int = setting(2, "ticks between the Raft leader's heartbeats (must be below raft_election_ticks)", _positive)
    raft_peer_queue_max: int = setting(1024, "Raft messages queued per peer; the oldest are dropped beyond it", _positive)
    metadata_snapshot_entries: int = setting(1000, "snapshot the metadata image and compact the Raft log every this many entries", _positive)
    broker_session_timeout_ms: int = setting(6000, "the controller fences a broker silent this long; brokers heartbeat every third of it", _positive)
    # Consumer groups (broker/groups/: the coordinator runs on the active controller).
    group_min_session_timeout_ms: int = setting(1000, "smallest session_timeout_ms a consumer may ask for", _positive)
    group_max_session_timeout_ms: int = setting(300_000, "largest session_timeout_ms a consumer may ask for", _positive)
    group_max_size: int = setting(1000, "members one group may have", _positive)
    groups_max: int = setting(10_000, "groups with members the coordinator holds at once", _positive)
    group_rejoin_grace_ms: int = setting(10_000, "a new coordinator hands out no partition nobody rejoined with for this long (groups with offsets)", _non_negative)
    offset_metadata_bytes_max: int = setting(4096, "largest metadata string of one committed offset", _non_negative)
    # Security (broker/security/; README "Securing tidelog"). One listener serves clients and peers.
    security_protocol: str = setting("PLAINTEXT", "PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SCRAM-SHA-256 logins); also what brokers use to reach each other", _one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    ssl_certfile: str | None = setting(None, "PEM certificate (chain) of this broker, for SSL/SASL_SSL; also shown to peers that ask for a client certificate", _readable_file)
    ssl_keyfile: str | None = setting(None, "PEM private key of ssl_certfile", _readable_file)
    ssl_cafile: str | None = setting(None, "PEM CA bundle that client certificates and peer brokers are verified against", _readable_file)
    ssl_client_auth: str = setting("none", "client certificates: none, requested or required (the certificate's CN becomes the principal User:<CN>)", _one_of("none", "requested", "required"))
    ssl_check_hostname: bool = setting(True, "when connecting to a peer broker over TLS, check its certificate names the address it was reached at")
    broker_username: str | None = setting(None, "SCRAM user this broker logs in to its peers as (SASL_*); a super user, checked against broker_password, never stored in metadata")
    broker_password: str | None = setting(None, "password of broker_username; every broker of a cluster has the same (prefer TIDELOG_BROKER_PASSWORD to the config file)")
    super_users: str | None = setting(None, "principals that skip ACL checks, e.g. User:admin,User:broker1 (the broker_username is always one)", _principals)
    acls_enabled: bool = setting(False, "check every request against ACLs (deny when no ACL allows it); super_users are exempt")
    quota_produce_bytes_per_s: int = setting(0, "produce bytes per second each principal may send (0: unlimited); answers are delayed, never dropped", _non_negative)
    quota_fetch_bytes_per_s: int = setting(0, "fetch bytes per second each principal may receive (0: unlimited)", _non_negative)
    quota_overrides: str | None = setting(None, "per-principal quotas, e.g. User:alice=produce:1048576/fetch:2097152,User:bob=fetch:0", _quota_overrides)
    connections_per_ip_max: int = setting(200, "open connections from one IP address; more are closed on accept (Kafka's max.connections.per.ip)", _positive)
    request_read_timeout_ms: int = setting(30_000, "a request frame (or TLS handshake) must arrive whole within this once it starts; a slower one closes the connection (slow-loris)", _positive)

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def advertised(self, bound_port: int | None = None) -> tuple[str, int]:
        """The address to tell others: `advertise`, else the listen address with the bound port."""
        if self.advertise:
            host, _, port = self.advertise.rpartition(":")
            return host, int(port)
        return self.listen_host, bound_port if bound_port is not None else self.listen_port


SETTINGS: dict[str, Any] = {f.name: f for f in fields(BrokerConfig)}


def parse_voters(text: str) -> dict[int, tuple[str, int]]:
    """`1@127.0.0.1:9292,2@127.0.0.1:9392` -> {1: ("127.0.0.1", 9292), 2: (...)}."""
    voters: dict[int, tuple[str, int]] = {}
    for item in text.split(","):
        node, sep, address = item.strip().partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not node.isdigit() or not colon or not host or not port.isdigit():
            raise ValueError(f"voter {item.strip()!r} is not ID@HOST:PORT")
        if int(node) in voters:
            raise ValueError(f"voter id {node} is listed twice")
        voters[int(node)] = (host, int(port))
    return voters


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a file/env/flag value into the setting's type; raise ConfigError naming it."""
    spec = SETTINGS[name]
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    try:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null") and "None" in kind):
            return None
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError("expected an integer")
            return int(str(raw).replace("_", ""))
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw
    except ValueError as exc:
        raise ConfigError(f"setting {name} from {source}: invalid value {raw!r} ({exc})") from None


def load_config(
    *,
    file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> BrokerConfig:
    """Merge defaults < file < environment < flags, validate every value, return the config."""
    values: dict[str, tuple[Any, str]] = {}
    if file is not None:
        path = Path(file)
        try:
            with path.open("rb") as handle:
                table = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not TOML ({exc})") from None
        for key, raw in table.items():
            name = key.replace("-", "_").replace(".", "_")
            if name not in SETTINGS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = (raw, f"config file {path}")
    for key, raw in (environ if environ is not None else os.environ).items():
        if key.startswith("TIDELOG_") and key not in ("TIDELOG_BOOTSTRAP", "TIDELOG_CONFIG"):
            name = key[len("TIDELOG_") :].lower()
            if name not in SETTINGS:
                raise ConfigError(f"environment variable {key}: unknown setting {name!r}")
            values[name] = (raw, f"environment variable {key}")
    for name, raw in (flags or {}).items():
        if raw is not None:
            values[name] = (raw, f"flag --{name.replace('_', '-')}")
    chosen = {name: _coerce(name, raw, source) for name, (raw, source) in values.items()}
    config = replace(BrokerConfig(), **chosen)
    for name, spec in SETTINGS.items():
        check = spec.metadata.get("check")
        problem = check(getattr(config, name)) if check else None
        if problem:
            source = values.get(name, (None, "default"))[1]
            raise ConfigError(f"setting {name} from {source}: {getattr(config, name)!r} {problem}")
    if config.group_min_session_timeout_ms > config.group_max_session_timeout_ms:
        raise ConfigError(f"setting group_min_session_timeout_ms ({config.group_min_session_timeout_ms}) is above "
                          f"group_max_session_timeout_ms ({config.group_max_session_timeout_ms})")
    return config


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting (default None, so unset flags do not override env or file)."""
    for name, spec in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=spec.metadata["meaning"])


def settings_table_markdown() -> str:
    """The documented table of every setting, for the README."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, spec in SETTINGS.items():
        rows.append(f"| `{name}` | `{spec.default!r}` | {spec.metadata['meaning']} |")
    return "\n".join(rows)
