"""`selfguard repro`: the classic reconnect loop, dialling a closed local port until a socket connects to itself."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .. import install, stats, uninstall
from .cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun, count, positive_count, positive_seconds
from .ports import ephemeral_range, free_port, parity
from .reconnect import Progress, guarded, unguarded

if TYPE_CHECKING:
    from .cli import Commands

DEFAULT_MAX_ATTEMPTS = 1_000_000
DEFAULT_MAX_SECONDS = 60.0

DESCRIPTION = f"""\
Dial a closed port on 127.0.0.1 with fresh sockets until one connects to itself
(as `while true; do telnet 127.0.0.1 40000; done` does), then do it again with
selfguard installed. It needs no kernel option and no root. The port has the
parity of the ephemeral range's low end: connect() tries source ports of that
parity first, so only those meet themselves on an idle host.

exit status:
  {EXIT_OK}  shown: the bug unguarded, and the guard catching it
  {EXIT_FOUND}  not shown: a bound was hit first, or the guard did not do its job
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: not Linux, /proc unreadable, no free port"""


def register(commands: Commands) -> None:
    """Add the `repro` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "repro",
        help="show a real self-connect on this machine, unguarded and then guarded (the default command)",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_count,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"give up a phase after N dials (default {count(DEFAULT_MAX_ATTEMPTS)})",
    )
    parser.add_argument(
        "--max-seconds",
        type=positive_seconds,
        default=DEFAULT_MAX_SECONDS,
        metavar="S",
        help=f"give up a phase after S seconds (default {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; its exit status is in DESCRIPTION."""
    low, high = ephemeral_range()
    if not args.json:
        # Before the dialling starts: the progress line (stderr) comes under it.
        print(heading(low, high, args.max_attempts, args.max_seconds), end="\n\n", flush=True)
    try:
        report = reproduce(low, high, args.max_attempts, args.max_seconds, Progress(sys.stderr))
    except (OSError, ValueError, RuntimeError) as exc:
        # No free port, or sockets refused outright.
        raise CannotRun(f"cannot run here: {exc}") from exc
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK if report["demonstrated"] else EXIT_FOUND


def reproduce(low: int, high: int, max_attempts: int, max_seconds: float, progress: Progress) -> dict[str, Any]:
    """Run the unguarded phase, then (if it showed the bug) the guarded one; return the findings."""
    report: dict[str, Any] = {
        "ephemeral_range": [low, high],
        "connect_parity": parity(low),
        "max_attempts": max_attempts,
        "max_seconds": max_seconds,
        "phases": [],
    }
    # A guard installed by a sitecustomize would hide the bug from the first phase.
    uninstall()
    first = unguarded(free_port(low, high, connect_parity=True), max_attempts, max_seconds, progress)
    report["phases"].append(asdict(first))
    if not first.demonstrated:
        report.update(demonstrated=False, reason=f"unguarded: {first.reason}")
        return report
    # The first port is in TIME_WAIT for a minute: the second phase needs another.
    if not install(mode="enforce"):
        report.update(demonstrated=False, reason="guarded: SELFGUARD is off in the environment, install() did nothing")
        return report
    try:
        port = free_port(low, high, connect_parity=True, avoid=[first.port])
        second = guarded(port, max_attempts, max_seconds, progress)
        report["stats"] = stats()
    finally:
        uninstall()
    report["phases"].append(asdict(second))
    report.update(demonstrated=second.demonstrated, reason=f"guarded: {second.reason}" if second.reason else "")
    return report


def _dials(n: int) -> str:
    return "1 dial" if n == 1 else f"{count(n)} dials"


def heading(low: int, high: int, max_attempts: int, max_seconds: float) -> str:
    """What the run is about to do, printed before it starts."""
    return (
        f"Dialling closed {parity(low)} ports on 127.0.0.1 with fresh sockets until one connects to itself; "
        f"at most {_dials(max_attempts)} or {max_seconds:g} s per phase.\n"
        f"{parity(low).capitalize()}, as the ephemeral range {low}-{high} starts: connect() tries source ports "
        "of that parity first."
    )


def _rate(phase: dict[str, Any]) -> str:
    # One phase is one sample (the dial of its first self-connect): the rate it
    # gives is a rough figure, so it comes with the interval it allows.
    low, high = phase["per_100000_95_interval"]
    n = phase["self_connects"]
    return (
        f"   self-connect rate to an {phase['parity']} port: {phase['self_connects_per_100000']:,g} per 100,000 dials "
        f"(from {count(n)} self-connect{'' if n == 1 else 's'}: anywhere from {low:,g} to {high:,g} at 95% confidence)"
    )


def render(report: dict[str, Any]) -> str:
    """The findings as text for a person, after the heading."""
    lines = []
    for number, phase in enumerate(report["phases"], 1):
        port, spent = phase["port"], f"in {_dials(phase['attempts'])} ({phase['seconds']:.2f} s)"
        bind = "OK" if phase["server_could_bind"] else f"fails: {phase['bind_error']}"
        if phase["name"] == "unguarded":
            lines.append(f"{number}. Without the guard, port {port}:")
            if phase["self_connects"]:
                lines += [
                    f"   a socket connected to itself after {_dials(phase['attempts'])} ({phase['seconds']:.2f} s)",
                    _rate(phase),
                    f"   it sent b'PING' and read back {phase['echo']}: its own request, as if a server answered",
                    f"   after close(), a server binding port {port}: {bind}"
                    + ("  <- TIME_WAIT, ~60 s" if not phase["server_could_bind"] else ""),
                ]
            else:
                lines.append(f"   no socket connected to itself {spent}")
        else:
            lines.append(f"{number}. With selfguard.install(), port {port}:")
            if phase["self_connects"]:
                lines += [f"   [log] {message}" for message in phase["logged"]]
                lines += [
                    f"   the guard caught a self-connect after {_dials(phase['attempts'])} ({phase['seconds']:.2f} s)",
                    _rate(phase),
                    f"   the caller saw {phase['caller_saw']}",
                    f"   sockets handed back connected to themselves: {phase['handed_back_self_connected']}",
                    f"   right after, a server binding port {port}: {bind}",
                ]
            else:
                lines.append(f"   the guard caught no self-connect {spent}")
    if "stats" in report:
        lines.append("   counters: " + ", ".join(f"{name} {count(value)}" for name, value in report["stats"].items()))
    lines.append("")
    if report["demonstrated"]:
        lines.append(
            "Shown: without the guard the loop met itself and kept the port from a server; "
            "with the guard it got a refusal and the port stayed free."
        )
    else:
        lines.append(f"Not shown: {report['reason']}")
    return "\n".join(lines)
