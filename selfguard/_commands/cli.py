"""What the `selfguard` commands share: exit statuses, the subcommand parser, how numbers are read and written."""

from __future__ import annotations

import argparse
import math
import re
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    # What each command's register() receives: the subparsers of `selfguard`.
    Commands = argparse._SubParsersAction["CommandParser"]

# One meaning per status, the same in every command (`run` passes CMD's own on).
EXIT_OK = 0
EXIT_FOUND = 1  # doctor: some port at risk; repro: not shown
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_CANNOT_RUN = 3  # not Linux, /proc unreadable, no right to write a sysctl, no tracefs

# Tokens that belong to the top-level parser itself; anything else starting
# with "-" is an option of the default command.
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")


class CannotRun(Exception):
    """This command cannot run here (not Linux, /proc unreadable, no right to write): one line for the user."""


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is its own error, told with its own usage.

    A plain subparser hands unknown arguments up to the top-level parser, whose
    error then shows `selfguard`'s usage instead of the command's. *unknown*,
    given the unknown arguments, may word that error for the command.
    """

    def __init__(self, *args: Any, unknown: Optional[Callable[[list[str]], str]] = None, **kwargs: Any) -> None:
        # Descriptions carry their own line breaks (exit-status lists).
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.unknown = unknown

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        namespace, extras = super().parse_known_args(*args, **kwargs)
        if extras:
            self.error(self.unknown(extras) if self.unknown else f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def count(n: int) -> str:
    """A quantity as the command line writes it everywhere: 1,000,000."""
    return f"{n:,}"


def positive_count(text: str) -> int:
    """argparse type for a whole number above 0, written 1000000 or 1,000,000 (as the help writes defaults)."""
    if not re.fullmatch(r"[0-9]+|[0-9]{1,3}(,[0-9]{3})+", text) or int(text.replace(",", "")) <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number above 0")
    return int(text.replace(",", ""))


def positive_seconds(text: str) -> float:
    """argparse type for a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds above 0")
    return value


def pid_number(text: str) -> int:
    """argparse type for a process id: a whole number above 0 (kill(2) reads -3 as a process group)."""
    if not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid process id {text!r}: expected a whole number above 0")
    return int(text)


def nonnegative_seconds(text: str) -> float:
    """argparse type for a finite number of seconds, 0 or above."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds, 0 or above")
    return value
