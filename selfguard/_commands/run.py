"""`selfguard run [--] CMD [ARGS...]`: run a command with the guard active in it and in every Python child it starts."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .. import _native
from .cli import EXIT_CANNOT_RUN, EXIT_USAGE

if TYPE_CHECKING:
    from .cli import Commands

# The directory holding selfguard's sitecustomize.py; it goes first on
# PYTHONPATH, so every Python interpreter started below finds it (and it, in
# turn, runs any sitecustomize it hides).
BOOTSTRAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_bootstrap")

USAGE = "selfguard run [-h] [--native | --require-native] [--strict] [--] CMD [ARGS...]"
WRITE_IT = "selfguard run -- CMD [ARGS...]"

DESCRIPTION = f"""\
Run CMD with selfguard's sitecustomize first on PYTHONPATH, so that every Python
interpreter it starts installs the guard (as ddtrace-run and
opentelemetry-instrument do). An existing PYTHONPATH and your own sitecustomize
keep working.

Everything after `run` is CMD and its arguments, options included
(`selfguard run python -X dev app.py`). Put `--` first when CMD itself starts
with '-'.

exit status:
  CMD's own
  {EXIT_USAGE}    usage error: no CMD, or an option before it (`selfguard run -x`)
  {EXIT_CANNOT_RUN}    --require-native (or --native --strict), but the native guard cannot be used
       here (says what is missing; plain --native warns and runs CMD without it)
  126  CMD cannot be executed
  127  CMD not found (looked up on PATH)"""


def _not_a_command(extras: list[str]) -> str:
    # `selfguard run -x`: an option of `run` (it has none but -h), or a
    # command named -x? Refuse to guess; say how to write either.
    return f"selfguard run has no option {extras[0]}; to run a command, write: {WRITE_IT}"


def register(commands: Commands) -> None:
    """Add the `run` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "run",
        help="run a command with the guard active in it and in every Python process it starts",
        description=DESCRIPTION,
        usage=USAGE,
        unknown=_not_a_command,
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help=(
            "also guard connects made in C (libpq, libcurl, Node, Java, ...): put selfguard's native guard "
            f"first in LD_PRELOAD for every program of CMD's process tree. It cannot reach {_native.CANNOT_REACH}"
        ),
    )
    parser.add_argument(
        "--require-native",
        action="store_true",
        help=(
            "like --native, but where the native guard cannot be used (not built in this installation), refuse to "
            f"run CMD (exit {EXIT_CANNOT_RUN}); plain --native warns on stderr and runs CMD without it, guarded by the "
            "Python guard only"
        ),
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help=(
            "refuse to run unguarded: a Python interpreter of CMD's tree that lacks selfguard (or is older than "
            "3.9) exits with status 3 before running anything, instead of running unguarded with a warning "
            "(sets SELFGUARD_REQUIRE=1); with --native, a missing native guard refuses too (as --require-native)"
        ),
    )
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]", help="the command to run, with its arguments"
    )

    def handle(args: argparse.Namespace) -> int:
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error(f"nothing to run: {WRITE_IT}")
        return run(
            command,
            native=args.native or args.require_native,
            strict=args.strict,
            require_native=args.require_native,
        )

    parser.set_defaults(func=handle)


def environment(environ: dict[str, str]) -> dict[str, str]:
    """*environ* with selfguard's sitecustomize first on PYTHONPATH (an existing PYTHONPATH is kept after it, as is)."""
    env = dict(environ)
    existing = env.get("PYTHONPATH")
    # Kept to the letter: an empty entry (":/x", or a trailing ":") means the
    # current directory, and dropping it would change what the program imports.
    env["PYTHONPATH"] = BOOTSTRAP + os.pathsep + existing if existing else BOOTSTRAP
    return env


def run(command: list[str], native: bool = False, strict: bool = False, require_native: bool = False) -> int:
    """Replace this process with the command: its exit status, signals and stdio are the command's own.

    Without the native guard, --native fails open as the rest of selfguard does: a
    service must not stay down because a guard is missing. It says so loudly, and
    --require-native or --strict (for whoever would rather not start unguarded)
    refuses instead.
    """
    env = environment(dict(os.environ))
    if strict:
        env["SELFGUARD_REQUIRE"] = "1"  # read by the sitecustomize of every Python interpreter below
    if native:
        try:
            env = _native.environment(env)
        except _native.Unavailable as exc:
            if require_native or strict:
                flag = "--require-native" if require_native else "--strict"
                print(f"selfguard run: {flag}: not running {command[0]}: {exc}", file=sys.stderr)
                return EXIT_CANNOT_RUN
            print(
                f"selfguard run: WARNING: --native: running {command[0]} WITHOUT the native guard: connects made in C "
                f"are not guarded (Python's are). {exc}. (--require-native refuses to run instead.)",
                file=sys.stderr,
            )
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"selfguard run: {command[0]}: command not found", file=sys.stderr)
        return 127  # as a shell says it
    except OSError as exc:
        print(f"selfguard run: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    raise AssertionError("execvpe returned")  # pragma: no cover
