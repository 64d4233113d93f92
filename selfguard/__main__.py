"""The `selfguard` command: `repro` (the demonstration, also the default), `doctor` and `run`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="selfguard",
        description="Show a real TCP self-connect on this machine, unguarded and then guarded by selfguard.",
        epilog="With no command, runs `selfguard repro` with its defaults.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"selfguard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = commands.add_parser(
        "doctor",
        help="find the server ports of this host that clients could connect themselves to",
        description=(
            "List this host's listening TCP ports (and the ports given with --port) that lie inside the "
            "ephemeral port range and are not reserved, and print the sysctl setting that reserves them. "
            "Exit status: 0 nothing at risk, 1 some port at risk, 2 this host could not be examined."
        ),
    )
    repro = commands.add_parser(
        "repro",
        help="the classic reconnect loop, until a socket connects to itself; then again, guarded",
        description=(
            "Dial a closed port on 127.0.0.1 with fresh sockets until one connects to itself (as "
            "`while true; do telnet 127.0.0.1 40000; done` does), then do it again with selfguard installed. "
            "Exit status: 0 shown, 1 not shown, 2 could not run."
        ),
    )
    run = commands.add_parser(
        "run",
        help="run a command with the guard active in it and in every Python process it starts",
        description=(
            "Run CMD with selfguard's sitecustomize first on PYTHONPATH, so that every Python interpreter it "
            "starts installs the guard (as ddtrace-run and opentelemetry-instrument do). An existing PYTHONPATH "
            "and your own sitecustomize keep working. The exit status is CMD's."
        ),
    )
    from . import _doctor, _repro, _run

    _doctor.add_arguments(doctor)
    _repro.add_arguments(repro)
    _run.add_arguments(run)
    args = parser.parse_args(argv)

    try:
        if args.command == "doctor":
            return _doctor.run(args)
        if args.command == "run":
            return _run.run(args)
        return _repro.run(args if args.command == "repro" else repro.parse_args([]))
    except BrokenPipeError:
        # `selfguard | head`: the reader went away; say nothing more.
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
