"""The `selfguard` command: builds the top-level parser, lets each command register itself, and dispatches."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_USAGE, TOP_LEVEL_OPTIONS, CannotRun, CommandParser

DESCRIPTION = """\
Protect programs from TCP self-connection: a client dialling a local port where
nothing listens, inside the ephemeral port range, can be given that very port as
its source port and connect to itself, then hold the port in TIME_WAIT so the
real server cannot bind it for ~60 s."""

EPILOG = f"""\
With no command, or with only repro's options (`selfguard --json`), runs
`selfguard repro`. `selfguard COMMAND --help` tells a command's options and
exit statuses.

exit status (every command but run, which passes CMD's own on):
  0  done: nothing at risk, or shown
  {EXIT_FOUND}  found: a port at risk (doctor), not shown (repro), not deployed (sitecustomize status)
  {EXIT_USAGE}  usage error: a bad command line
  {EXIT_CANNOT_RUN}  could not run: not Linux, /proc unreadable, no right to write a sysctl,
     not root or no tracefs (watch)"""


def _with_default_command(parser: argparse.ArgumentParser, argv: Sequence[str], names: Sequence[str]) -> list[str]:
    # A bare `selfguard` runs repro, so `selfguard --json` must too: the
    # default command's options would otherwise meet the top-level parser.
    if not argv or (argv[0].startswith("-") and argv[0] not in TOP_LEVEL_OPTIONS):
        # `selfguard --max-attempts 5 doctor`: an option before a command
        # belongs to no command; handed to repro, the error would blame repro.
        named = next((word for word in argv if word in names), None)
        if named is not None:
            parser.error(
                f"{argv[0]} comes before the command {named}: a command's options go after it "
                f"(`selfguard {named} --help` lists {named}'s)"
            )
        return ["repro", *argv]
    return list(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .._version import __version__
    from . import completion as _completion
    from . import deploy as _deploy
    from . import doctor as _doctor
    from . import repro as _repro
    from . import run as _run
    from . import watch as _watch

    parser = argparse.ArgumentParser(
        prog="selfguard",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # `--vers` must not pass for --version: anything else goes to repro.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"selfguard {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=CommandParser)
    for command in (_repro, _doctor, _run, _deploy, _watch, _completion):
        command.register(commands)
    args = parser.parse_args(
        _with_default_command(parser, sys.argv[1:] if argv is None else argv, list(commands.choices))
    )
    try:
        status: int = args.func(args)
    except CannotRun as exc:
        print(f"selfguard {args.command}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except BrokenPipeError:
        # `selfguard | head`: the reader went away; say nothing more.
        sys.stdout = None
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
