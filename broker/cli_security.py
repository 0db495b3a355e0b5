"""`tidelog users ...` and `tidelog acls ...`, and the client commands' `--command-config FILE`.

    tidelog users add alice [--password-stdin | --password P] [--iterations N]
    tidelog users delete alice
    tidelog users list
    tidelog acls add    --principal User:alice (--topic T | --group G | --cluster) [--prefixed]
                        --operation read [--operation write ...] [--deny]
    tidelog acls remove [--principal P] [--topic T | --group G | --cluster] [--prefixed]
                        [--operation OP ...] [--deny | --allow]        # unset fields match any
    tidelog acls list   [same filters as remove]

--command-config FILE holds the client's security settings as KEY=VALUE lines (Kafka's names):

    security.protocol=SASL_SSL          # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl.mechanism=SCRAM-SHA-256
    sasl.username=admin
    sasl.password=...
    ssl.cafile=ca.pem                   # verify the broker
    ssl.certfile=client.pem             # present a client certificate (ssl.keyfile its key)
    ssl.keyfile=client.key
    ssl.check.hostname=true
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

_COMMAND_CONFIG_KEYS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.cafile",
                        "ssl.certfile", "ssl.keyfile", "ssl.check.hostname")


class CommandConfigError(Exception):
    """A bad --command-config file; one line naming the file and the key."""


def add_command_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--command-config", default=None, metavar="FILE",
                        help="client security settings (security.protocol, sasl.username, ssl.cafile, ...)")


def security_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """SDK keywords (security_protocol, ssl_context, sasl_*) from --command-config, or {}."""
    path = getattr(args, "command_config", None)
    if not path:
        return {}
    from client.security import create_ssl_context

    values: dict[str, str] = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise CommandConfigError(f"--command-config {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in _COMMAND_CONFIG_KEYS:
            raise CommandConfigError(f"--command-config {path} line {number}: expected KEY=VALUE with KEY one of "
                                     f"{', '.join(_COMMAND_CONFIG_KEYS)}")
        values[key] = value.strip()
    kwargs: dict[str, Any] = {"security_protocol": values.get("security.protocol", "PLAINTEXT")}
    if "sasl.mechanism" in values:
        kwargs["sasl_mechanism"] = values["sasl.mechanism"]
    if "sasl.username" in values:
        kwargs["sasl_plain_username"] = values["sasl.username"]
        kwargs["sasl_plain_password"] = values.get("sasl.password", "")
    if kwargs["security_protocol"] in ("SSL", "SASL_SSL"):
        try:
            kwargs["ssl_context"] = create_ssl_context(
                cafile=values.get("ssl.cafile"), certfile=values.get("ssl.certfile"), keyfile=values.get("ssl.keyfile"),
                check_hostname=values.get("ssl.check.hostname", "true").lower() not in ("false", "0", "no"))
        except OSError as exc:
            raise CommandConfigError(f"--command-config {path}: cannot load the TLS files: {exc.strerror or exc}") from None
    return kwargs


def add_security_commands(sub: argparse._SubParsersAction, add_common) -> None:
    users = sub.add_parser("users", help="add, delete, list SCRAM-SHA-256 users")
    user_sub = users.add_subparsers(dest="users_command", required=True)
    add = user_sub.add_parser("add", help="create a user or change its password")
    add.add_argument("name")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--password", default=None, help="the password (visible in the process list: prefer --password-stdin)")
    source.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--iterations", type=int, default=None, help="PBKDF2 iterations (4096 to 16384, default 8192)")
    delete = user_sub.add_parser("delete", help="delete a user")
    delete.add_argument("name")
    user_sub.add_parser("list", help="list users (name, mechanism, iterations)")
    for parser in user_sub.choices.values():
        add_common(parser)
        parser.set_defaults(run=_run(_users))

    acls = sub.add_parser("acls", help="add, remove, list ACLs")
    acl_sub = acls.add_subparsers(dest="acls_command", required=True)
    for name, help_text in (("add", "allow (or --deny) operations on a resource"),
                            ("remove", "remove the ACLs matching the given fields"),
                            ("list", "list the ACLs matching the given fields")):
        parser = acl_sub.add_parser(name, help=help_text)
        parser.add_argument("--principal", default=None, help="User:<name>, or User:* for everyone")
        resource = parser.add_mutually_exclusive_group()
        resource.add_argument("--topic", default=None)
        resource.add_argument("--group", default=None)
        resource.add_argument("--cluster", action="store_true")
        parser.add_argument("--prefixed", action="store_true", help="the name is a prefix (default: literal name)")
        parser.add_argument("--operation", action="append", default=[],
                            choices=["read", "write", "create", "delete", "describe", "alter", "cluster_action", "all"])
        permission = parser.add_mutually_exclusive_group()
        permission.add_argument("--deny", action="store_true")
        permission.add_argument("--allow", action="store_true")
        add_common(parser)
        parser.set_defaults(run=_run(_acls))


def run_command(handler, args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    """Run an async command; an error of `errors` is one line on stderr and exit status 1."""
    try:
        return asyncio.run(handler(args))
    except errors as exc:
        print(f"tidelog: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(handler):
    def run(args: argparse.Namespace) -> int:
        from client.errors import TidelogError

        return run_command(handler, args, (TidelogError, CommandConfigError, ValueError, OSError))

    return run


def admin_for(args: argparse.Namespace):
    """An Admin client from the common flags (--bootstrap, --request-timeout-ms, --command-config)."""
    from client import Admin

    return Admin(bootstrap_servers=args.bootstrap, request_timeout_ms=args.request_timeout_ms, **security_kwargs(args))


async def _users(args: argparse.Namespace) -> int:
    async with admin_for(args) as admin:
        if args.users_command == "add":
            password = args.password
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            elif password is None:
                password = getpass.getpass(f"password for {args.name}: ")
            if not password:
                raise ValueError("the password is empty")
            extra = {} if args.iterations is None else {"iterations": args.iterations}
            await admin.create_user(args.name, password, **extra)
            print(f"user {args.name} saved")
        elif args.users_command == "delete":
            await admin.delete_user(args.name)
            print(f"user {args.name} deleted")
        else:
            for user in sorted(await admin.list_users(), key=lambda u: u.user):
                print(f"{user.user}\t{user.mechanism}\titerations={user.iterations}")
    return 0


def _resource(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.topic is not None:
        return "topic", args.topic
    if args.group is not None:
        return "group", args.group
    if args.cluster:
        return "cluster", "cluster"
    return None, None


async def _acls(args: argparse.Namespace) -> int:
    from client.security import AclBinding, AclFilter

    resource_type, name = _resource(args)
    permission = "deny" if args.deny else "allow" if args.allow else None
    pattern = "prefixed" if args.prefixed else ("literal" if name is not None else None)
    async with admin_for(args) as admin:
        if args.acls_command == "add":
            if not args.principal or resource_type is None or not args.operation:
                raise ValueError("acls add needs --principal, one of --topic/--group/--cluster, and --operation")
            bindings = [AclBinding(args.principal, resource_type, name, pattern, operation, permission or "allow")
                        for operation in args.operation]
            await admin.create_acls(bindings)
            for binding in bindings:
                print(f"added {_format(binding)}")
            return 0
        filters = [AclFilter(args.principal, resource_type, name, pattern, operation, permission)
                   for operation in (args.operation or [None])]
        if args.acls_command == "remove":
            for binding in await admin.delete_acls(filters):
                print(f"removed {_format(binding)}")
        else:
            seen = set()
            for acl_filter in filters:
                for binding in await admin.describe_acls(acl_filter):
                    if tuple(binding.to_row()) not in seen:
                        seen.add(tuple(binding.to_row()))
                        print(_format(binding))
    return 0


def _format(binding: Any) -> str:
    return (f"{binding.principal}\t{binding.permission}\t{binding.operation}\t{binding.resource_type}:"
            f"{binding.resource_name}{'*' if binding.pattern_type == 'prefixed' else ''}")
