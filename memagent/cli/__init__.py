"""The `memagent` command line: one module per group of subcommands.

Building the parser imports no torch: commands that only talk to a server start in a blink,
and those that need a model import it when they run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

DESCRIPTION = "Agent memory in a model's latent space: serve it, use a server's memories, train and evaluate the default."
# Each module has `register(subparsers)`, adding its subcommands with a `run(args)` default.
SUBCOMMAND_MODULES = [
    "memagent.cli.serve",
    "memagent.cli.client_commands",
    "memagent.cli.train",
    "memagent.cli.token",
    "memagent.cli.repair",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, unless there is none to show (None, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        nothing = action.default is None or action.default is False
        return action.help if nothing else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memagent", description=DESCRIPTION, formatter_class=HelpFormatter)
    subparser = functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=subparser)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
