"""roost's command line: the one composition root of the ``roost`` command.

Each area registers its subcommands from its own module (``tracker``,
``release``, ``core``, ``fleet``, ``status``, ``lab``). A subcommand's handler
takes the parsed arguments and returns an exit status. A ``RoostError``
becomes one line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from roost import __version__
from roost.errors import RoostError

# Modules under roost.cli that expose ``register(subparsers)``. A module that
# does not exist yet is skipped, so areas can land independently.
_AREAS = (
    "tracker",
    "release",
    "core",
    "fleet",
    "releases",
    "status",
    "lab",
    "agent",
    "origin",
)


#: The area that registers each command. ``roost CMD ...`` builds CMD's
#: parser alone (the area's ``COMMANDS[CMD]``, else its ``register``): a
#: peer, started on every host at once, imports and builds nothing of the
#: other commands (tests/cli/test_cli_imports.py keeps this table true).
COMMAND_AREAS = {
    "tracker": "tracker",
    "create": "release",
    "sign": "release",
    "verify": "release",
    "seed": "core",
    "peer": "core",
    "deploy": "core",
    "bootstrap": "fleet",
    "fleet": "fleet",
    "releases": "releases",
    "activate": "releases",
    "rollback": "releases",
    "rollout": "releases",
    "status": "status",
    "lab": "lab",
    "agent": "agent",
    "publish": "agent",
    "channel": "agent",
    "origin": "origin",
}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: the command, what was
    wrong, and where the usage is (argparse prints the whole usage first,
    23 lines for ``roost deploy``, above the one that matters)."""

    #: The subcommands' parsers by name (``add_subparsers``' choices).
    commands: Mapping[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> Parser:
    """roost's parser: every command's, or with ``command`` (one of
    :data:`COMMAND_AREAS`) only that one's."""
    parser = Parser(
        prog="roost",
        description=(
            "Deploy a build to many servers over BitTorrent: every server that has "
            "a piece also uploads it, so the time hardly grows with the fleet."
        ),
    )
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices
    if command is not None:
        module = importlib.import_module(f"roost.cli.{COMMAND_AREAS[command]}")
        commands = getattr(module, "COMMANDS", {})
        if command in commands:
            commands[command](sub)
        else:
            module.register(sub)
        return parser
    for area in _AREAS:
        try:
            module = importlib.import_module(f"roost.cli.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"roost.cli.{area}":
                raise
            continue
        module.register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if its first word is one (top-level
    options take no value, so the first word that is not one is it)."""
    for word in argv:
        if word in ("-h", "--help", "--version"):
            return None
        if not word.startswith("-"):
            return word if word in COMMAND_AREAS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    command = _command_of(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Named by the command they were given to, not by roost's top level.
        named = parser.commands.get(command or "", parser)
        named.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="roost: %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except RoostError as exc:
        print(f"roost: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from roost.cli.signals import Terminated

        if isinstance(exc, Terminated):
            print("roost: stopped by SIGTERM", file=sys.stderr)
            return 143
        print("roost: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        return 141  # 128 + SIGPIPE, as a shell reports a reader that left


def _stdout_gone() -> bool:
    """Whether stdout's reader went away (``roost releases | head``; a pipe
    whose other end is closed polls as an error): then stdout is pointed at
    /dev/null, so that the exit's flush stays quiet."""
    import select

    poll = select.poll()
    poll.register(1, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poll.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return True
