"""`selfguard run -- CMD ARGS...`: run a command with the guard active in it and in every Python process it starts."""

from __future__ import annotations

import argparse
import os
import sys

# The directory holding selfguard's sitecustomize.py; it goes first on
# PYTHONPATH, so every Python interpreter started below finds it (and it, in
# turn, runs any sitecustomize it hides).
BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run")


def environment(environ: dict[str, str]) -> dict[str, str]:
    """*environ* with selfguard's sitecustomize first on PYTHONPATH (an existing PYTHONPATH is kept after it, as is)."""
    env = dict(environ)
    existing = env.get("PYTHONPATH")
    # Kept to the letter: an empty entry (":/x", or a trailing ":") means the
    # current directory, and dropping it would change what the program imports.
    env["PYTHONPATH"] = BOOTSTRAP + os.pathsep + existing if existing else BOOTSTRAP
    return env


def run(args: argparse.Namespace) -> int:
    """Replace this process with the command: its exit status, signals and stdio are the command's own."""
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("selfguard run: nothing to run; usage: selfguard run -- CMD [ARGS...]", file=sys.stderr)
        return 2
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, environment(dict(os.environ)))
    except FileNotFoundError:
        print(f"selfguard run: {command[0]}: command not found", file=sys.stderr)
        return 127  # as a shell says it
    except OSError as exc:
        print(f"selfguard run: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    raise AssertionError("execvpe returned")  # pragma: no cover
