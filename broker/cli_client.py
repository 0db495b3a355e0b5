"""Client commands of the `tidelog` CLI: topics, produce, consume, groups, cluster. They use only the SDK.

Exit status: 0 on success, 1 with one line on stderr for any failure the user can act on
(unknown topic, broker unreachable, invalid config), 2 for bad flags (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9292"


class CliError(Exception):
    """A failure worth one line on stderr and exit status 1."""


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="create, list, describe, alter, delete topics")
    topic_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_sub.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="topic setting, e.g. retention.ms=3600000 (repeatable)")
    topic_sub.add_parser("list", help="list topics")
    describe = topic_sub.add_parser("describe", help="partitions, leaders, replicas, ISR and configs")
    describe.add_argument("name")
    alter = topic_sub.add_parser("alter", help="change a topic's configs (others stay as they are)")
    alter.add_argument("name")
    alter.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                       help="set a topic setting, e.g. retention.ms=3600000 (repeatable)")
    alter.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                       help="remove a topic setting: the broker default applies again (repeatable)")
    delete = topic_sub.add_parser("delete", help="delete a topic and its data")
    delete.add_argument("name")
    for parser in (create, describe, alter, delete, topic_sub.choices["list"]):
        _add_common(parser)

    produce = sub.add_parser("produce", help="send one record per stdin line")
    produce.add_argument("topic")
    produce.add_argument("--acks", default="1", choices=["0", "1", "all", "-1"])
    produce.add_argument("--key-separator", default=None, metavar="SEP",
                         help="split each line at the first SEP into key and value")
    produce.add_argument("--partition", type=int, default=None)
    produce.add_argument("--linger-ms", type=int, default=5)
    _add_common(produce)

    consume = sub.add_parser("consume", help="print records, one value per line")
    consume.add_argument("topic")
    consume.add_argument("--group", default=None, help="consumer group id")
    consume.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    consume.add_argument("--max-messages", type=int, default=None, metavar="N", help="exit after N records")
    consume.add_argument("--timeout-ms", type=int, default=None, help="exit after this long without a record")
    consume.add_argument("--print-key", action="store_true", help="print KEY<TAB>VALUE")
    consume.add_argument("--print-offset", action="store_true", help="prefix partition:offset")
    _add_common(consume)

    groups = sub.add_parser("groups", help="list and describe consumer groups")
    group_sub = groups.add_subparsers(dest="groups_command", required=True)
    group_sub.add_parser("list", help="list groups (with members or committed offsets)")
    describe_group = group_sub.add_parser("describe", help="state, members, assignment, committed offsets, lag")
    describe_group.add_argument("group")
    for parser in group_sub.choices.values():
        _add_common(parser)

    cluster = sub.add_parser("cluster", help="the controller quorum and the brokers")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_sub.add_parser(
        "status", help="voters, controller leader, term, commit index, each voter's lag, brokers")
    _add_common(status)

    from broker.cli_security import add_security_commands

    add_security_commands(sub, _add_common)  # users, acls (broker/cli_security.py)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", default=os.environ.get("TIDELOG_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                        help="HOST:PORT[,HOST:PORT...] (default $TIDELOG_BOOTSTRAP or 127.0.0.1:9292)")
    parser.add_argument("--request-timeout-ms", type=int, default=10_000)
    from broker.cli_security import add_command_config_flag

    add_command_config_flag(parser)  # TLS / SASL settings of the client (broker/cli_security.py)


def _security(args: argparse.Namespace) -> dict[str, Any]:
    from broker.cli_security import security_kwargs

    return security_kwargs(args)


def _sdk_security(args: argparse.Namespace) -> Any:
    from client.security import SecurityConfig

    return SecurityConfig.from_kwargs(**_security(args))


def run_client_command(args: argparse.Namespace) -> int:
    """Run one client command; map every SDK error to one line on stderr and exit 1."""
    from broker.cli_security import CommandConfigError, run_command
    from client.errors import TidelogError

    handler = {"topics": _topics, "produce": _produce, "consume": _consume, "groups": _groups,
               "cluster": _cluster}[args.command]
    return run_command(handler, args, (TidelogError, CliError, CommandConfigError, OSError))


async def _topics(args: argparse.Namespace) -> int:
    from broker.cli_security import admin_for

    async with admin_for(args) as admin:
        command = args.topics_command
        if command == "create":
            config = _parse_config(args.config)
            await admin.create_topic(args.name, partitions=args.partitions,
                                     replication_factor=args.replication_factor, config=config)
            print(f"created topic {args.name} with {args.partitions} partition(s)")
        elif command == "list":
            for name in sorted(await admin.list_topics()):
                print(name)
        elif command == "describe":
            _print_description(await admin.describe_topic(args.name))
        elif command == "alter":
            config = _parse_config(args.config)
            if not config and not args.delete_config:
                raise CliError("nothing to alter: give --config KEY=VALUE and/or --delete-config KEY")
            await admin.alter_topic_config(args.name, set=config, delete=args.delete_config)
            print(f"altered topic {args.name}")
        elif command == "delete":
            await admin.delete_topic(args.name)
            print(f"deleted topic {args.name}")
    return 0


def _parse_config(pairs: list[str]) -> dict[str, str]:
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--config {pair!r} is not KEY=VALUE")
        config[key] = value
    return config


def _print_description(description: Any) -> None:
    print(f"topic {description.name}")
    for key, value in sorted((getattr(description, "config", None) or {}).items()):
        print(f"  config {key}={value}")
    for p in description.partitions:
        print(f"  partition={p.partition} leader={p.leader} leader_epoch={p.leader_epoch} "
              f"replicas={','.join(map(str, p.replicas))} isr={','.join(map(str, p.isr))}")


async def _produce(args: argparse.Namespace) -> int:
    from client import Producer

    acks: int | str = "all" if args.acks in ("all", "-1") else int(args.acks)
    loop = asyncio.get_running_loop()
    sent = 0
    async with Producer(bootstrap_servers=args.bootstrap, acks=acks, linger_ms=args.linger_ms,
                        request_timeout_ms=args.request_timeout_ms, **_security(args)) as producer:
        pending = []
        while True:
            line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
            if not line:
                break
            line = line.rstrip(b"\r\n")
            key = None
            if args.key_separator is not None:
                key, sep, value = line.partition(args.key_separator.encode())
                if not sep:
                    key, value = None, line
            else:
                value = line
            pending.append(await producer.send(args.topic, value=value, key=key, partition=args.partition))
            sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    print(f"produced {sent} record(s) to {args.topic}", file=sys.stderr)
    return 0


async def _consume(args: argparse.Namespace) -> int:
    from client import Consumer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    reset = "earliest" if args.from_beginning else "latest"
    kwargs: dict[str, Any] = dict(bootstrap_servers=args.bootstrap, auto_offset_reset=reset,
                                  request_timeout_ms=args.request_timeout_ms, **_security(args))
    if args.group:
        kwargs["group_id"] = args.group
    received = 0
    last_record_at = loop.time()
    out = sys.stdout.buffer
    async with Consumer(args.topic, **kwargs) as consumer:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            if not batches:
                if args.timeout_ms is not None and (loop.time() - last_record_at) * 1000 >= args.timeout_ms:
                    break
                continue
            last_record_at = loop.time()
            for records in batches.values():
                for record in records:
                    out.write(_format(record, args))
                    received += 1
                    if args.max_messages is not None and received >= args.max_messages:
                        out.flush()
                        return 0
            out.flush()
            if args.group:
                await consumer.commit()
    return 0


def _format(record: Any, args: argparse.Namespace) -> bytes:
    value = record.value if record.value is not None else b"null"
    parts = []
    if args.print_offset:
        parts.append(f"{record.partition}:{record.offset}".encode())
    if args.print_key:
        parts.append(record.key if record.key is not None else b"null")
    parts.append(value)
    return b"\t".join(parts) + b"\n"


async def _groups(args: argparse.Namespace) -> int:
    from broker.cli_security import admin_for

    async with admin_for(args) as admin:
        if args.groups_command == "list":
            for group in await admin.list_groups():
                print(group)
            return 0
        description = await admin.describe_group(args.group)
    _print_group(description)
    return 0


def _print_group(group: Any) -> None:
    print(f"group {group.group_id}  state {group.state}  generation {group.generation}  "
          f"assignor {group.assignor or '-'}  members {len(group.members)}")
    owner = {}
    for member in group.members:
        static = f"  instance {member.group_instance_id}" if member.group_instance_id else ""
        print(f"  member {member.member_id}  client {member.client_id}  host {member.host}{static}  "
              f"partitions {len(member.assignment)}")
        for tp in member.assignment:
            owner[tp] = member.member_id
    partitions = sorted(set(group.committed) | set(owner))
    if not partitions:
        return
    print(f"  {'topic':<24}{'partition':>10}{'committed':>12}{'lag':>10}  member")
    for tp in partitions:
        committed = group.committed.get(tp)
        lag = group.lag.get(tp)
        print(f"  {tp.topic:<24}{tp.partition:>10}{'-' if committed is None else committed:>12}"
              f"{'-' if lag is None else lag:>10}  {owner.get(tp, '-')}")


async def _cluster(args: argparse.Namespace) -> int:
    from broker.cli_security import admin_for

    async with admin_for(args) as admin:
        description = await admin.describe_cluster()
        quorum, description = await _describe_quorum(admin, description, args)
    addresses = {b.node_id: f"{b.host}:{b.port}" for b in description.brokers}
    print(f"cluster {description.cluster_id or '(no id yet)'}")
    print(f"controller {quorum.leader_id}  term {quorum.term}  commit index {quorum.commit_index}  "
          f"last index {quorum.last_index}")
    for title, rows in (("voters", quorum.voters), ("observers", quorum.observers)):
        print(title)
        if not rows:
            print("  (none)")
            continue
        print(f"  {'node':<6}{'address':<24}{'state':<11}{'match':>8}{'lag':>8}  active")
        for r in rows:
            print(f"  {r.node_id:<6}{addresses.get(r.node_id, '?'):<24}{r.state:<11}{r.match_index:>8}{r.lag:>8}  "
                  f"{'yes' if r.recent_active else 'no'}")
    print("brokers")
    for b in description.brokers:
        print(f"  {b.node_id:<6}{addresses[b.node_id]:<24}{'fenced' if b.fenced else 'live'}")
    return 0


async def _describe_quorum(admin: Any, description: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """DescribeQuorum from the controller leader: ask the broker the cluster names as controller,
    and on NOT_CONTROLLER (an election under way) ask again with fresh metadata, until the
    request timeout."""
    from client.connection import Connection
    from client.errors import TidelogError, error_for_code
    from client.protocol.errors import ErrorCode
    from client.protocol.messages import DescribeQuorumRequest

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.request_timeout_ms / 1000
    last: str = "no controller is known"
    while True:
        brokers = {b.node_id: (b.host, b.port) for b in description.brokers}
        address = brokers.get(description.controller_id)
        if address is not None:
            try:
                conn = await Connection.open(*address, node_id=description.controller_id, security=_sdk_security(args),
                                             request_timeout_ms=max(1.0, (deadline - loop.time()) * 1000))
                try:
                    response = await conn.request(DescribeQuorumRequest())
                finally:
                    conn.close()
                if response.error_code == ErrorCode.NONE:
                    return response, description
                error = error_for_code(response.error_code, response.error_message,
                                       f"DescribeQuorum on broker {description.controller_id}")
                if not error.retriable:
                    raise error
                last = str(error)
            except TidelogError as exc:
                if not exc.retriable:
                    raise
                last = str(exc)
        if loop.time() + 0.1 >= deadline:
            raise CliError(f"no answer from the controller within {args.request_timeout_ms} ms: {last}")
        await asyncio.sleep(0.1)
        description = await admin.describe_cluster()
