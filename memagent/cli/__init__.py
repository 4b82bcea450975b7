"""The `memagent` command line: one module per group of subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module has `register(subparsers)`, adding its subcommands with a `run(args)` default.
SUBCOMMAND_MODULES = ["memagent.cli.serve", "memagent.cli.client_commands", "memagent.cli.train", "memagent.cli.repair"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memagent", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
