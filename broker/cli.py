"""The `tidelog` command line. Subcommands are added as the parts they drive land.

Each subcommand is registered by an `add_*` function that adds its parser and sets
`run=<callable(args) -> exit status>`. Client subcommands (topics, produce, consume, ...)
live in `broker/cli_client.py`: when that module exists, its `add_client_commands(subparsers)`
adds them and `run_client_command(args)` runs any subcommand that set no `run` of its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

EXIT_USAGE = 2  # argparse's status for a bad command line; a bad setting is one too


def _print_version(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    print(version("tidelog"))
    return 0


def _run_broker(args: argparse.Namespace) -> int:
    from broker.config import SETTINGS, ConfigError, load_config

    flags = {name: getattr(args, name) for name in SETTINGS}
    try:
        config = load_config(file=args.config or os.environ.get("TIDELOG_CONFIG"), environ=os.environ, flags=flags)
    except ConfigError as exc:
        print(f"tidelog: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from broker.daemon import run

    return run(config)


def add_broker_command(sub: argparse._SubParsersAction) -> None:
    from broker.config import add_flags

    parser = sub.add_parser(
        "broker",
        help="run a broker",
        description="Run a tidelog broker. Settings: flags > TIDELOG_<SETTING> env > --config file > defaults.",
    )
    parser.add_argument("--config", metavar="FILE", default=None, help="TOML file of settings")
    add_flags(parser)
    parser.set_defaults(run=_run_broker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidelog", description="tidelog: a Kafka-like broker in Python")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version").set_defaults(run=_print_version)
    add_broker_command(sub)
    from broker.dev import add_dev_command

    add_dev_command(sub)
    if _has_client_commands():
        from broker import cli_client

        cli_client.add_client_commands(sub)
    if importlib.util.find_spec("broker.cli_bench") is not None:
        from broker import cli_bench

        cli_bench.add_bench_command(sub)
    return parser


def _has_client_commands() -> bool:
    return importlib.util.find_spec("broker.cli_client") is not None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        from broker import cli_client

        run = cli_client.run_client_command
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
