"""The `tidelog` command line. Subcommands are added as the parts they drive land."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidelog", description="tidelog: a Kafka-like broker in Python")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from importlib.metadata import version

        print(version("tidelog"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
