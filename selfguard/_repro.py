"""`selfguard repro`: the classic reconnect loop, dialling a closed local port until a socket connects to itself."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from . import install, is_self_connected, stats, uninstall
from ._cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun, count, positive_count, positive_seconds
from ._ports import ephemeral_range, free_port

if TYPE_CHECKING:
    from ._cli import Commands

DEFAULT_MAX_ATTEMPTS = 1_000_000
DEFAULT_MAX_SECONDS = 60.0
# A dial to a closed loopback port fails at once; the timeout only bounds a
# dial that hangs (a firewall dropping loopback packets).
DIAL_TIMEOUT = 5.0
# The clock and the progress line are looked at once per this many dials.
CHECK_EVERY = 256
PROGRESS_EVERY = 0.1  # seconds between updates of the progress line


@dataclass
class Phase:
    """What one phase of the run did and saw."""

    name: str  # "unguarded" or "guarded"
    port: int
    attempts: int = 0
    self_connects: int = 0
    seconds: float = 0.0
    echo: Optional[str] = None  # unguarded: what the socket read back after sending b"PING"
    caller_saw: Optional[str] = None  # guarded: what connect() told the caller when the guard caught one
    handed_back_self_connected: int = 0  # guarded: connects that returned a socket connected to itself
    logged: list[str] = field(default_factory=list)  # guarded: what the guard logged (logger "selfguard")
    server_could_bind: Optional[bool] = None  # a server without SO_REUSEADDR, right after the client closed
    bind_error: Optional[str] = None
    demonstrated: bool = False
    reason: str = ""


def _bind_error(port: int) -> Optional[str]:
    """Try to bind *port* as a server that does not set SO_REUSEADDR would; return the error, if any."""
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        return str(exc)
    finally:
        server.close()
    return None


class _Progress:
    """One updating line on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on = stream.isatty()
        self.shown_at = 0.0

    def show(self, phase: Phase, now: float) -> None:
        if self.on and now - self.shown_at >= PROGRESS_EVERY:
            self.shown_at = now
            self.stream.write(
                f"\r  {phase.name}: {phase.attempts:,} dials to port {phase.port}, {phase.seconds:.1f} s "
            )
            self.stream.flush()

    def clear(self) -> None:
        if self.on:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _dial(
    phase: Phase,
    max_attempts: int,
    max_seconds: float,
    progress: _Progress,
    done: Callable[[socket.socket, bool], bool],
) -> Optional[socket.socket]:
    """Dial phase.port with fresh unbound sockets until done(sock, connected) (bounded); return that socket, open."""
    address = ("127.0.0.1", phase.port)
    started = time.monotonic()
    try:
        while phase.attempts < max_attempts:
            phase.attempts += 1
            sock = socket.socket()
            sock.settimeout(DIAL_TIMEOUT)
            error: Optional[OSError] = None
            try:
                sock.connect(address)
            except OSError as exc:
                error = exc
            if done(sock, error is None):
                phase.caller_saw = "a connected socket" if error is None else f"{type(error).__name__}: {error}"
                return sock
            sock.close()
            if phase.attempts % CHECK_EVERY == 0:
                now = time.monotonic()
                phase.seconds = now - started
                if phase.seconds >= max_seconds:
                    break
                progress.show(phase, now)
        return None
    finally:
        phase.seconds = round(time.monotonic() - started, 3)
        progress.clear()


def unguarded(port: int, max_attempts: int, max_seconds: float, progress: _Progress) -> Phase:
    """Dial until a socket connects to itself; show it reads its own bytes and leaves the port held."""
    phase = Phase("unguarded", port)

    def met(sock: socket.socket, connected: bool) -> bool:
        return connected and is_self_connected(sock)

    sock = _dial(phase, max_attempts, max_seconds, progress, met)
    if sock is None:
        phase.reason = _bound_hit(phase, max_attempts, "no socket connected to itself")
        return phase
    phase.self_connects = 1
    with sock:
        sock.sendall(b"PING")
        phase.echo = repr(sock.recv(4))
    # That close() is what a client does; the TIME_WAIT it leaves is the incident.
    phase.bind_error = _bind_error(port)
    phase.server_could_bind = phase.bind_error is None
    phase.demonstrated = True
    return phase


def guarded(port: int, max_attempts: int, max_seconds: float, progress: _Progress) -> Phase:
    """The same loop with selfguard installed, until the guard has caught a self-connect."""
    phase = Phase("guarded", port)
    before = stats()["self_connects"]
    # Keep the guard's log lines for the report; with a handler of its own,
    # the logger no longer falls back to writing them into the progress line.
    handler = _Collect(phase.logged)
    logger = logging.getLogger("selfguard")
    logger.addHandler(handler)

    def caught(sock: socket.socket, connected: bool) -> bool:
        if connected and is_self_connected(sock):
            phase.handed_back_self_connected += 1
        return stats()["self_connects"] > before

    try:
        sock = _dial(phase, max_attempts, max_seconds, progress, caught)
    finally:
        logger.removeHandler(handler)
    phase.self_connects = stats()["self_connects"] - before
    if sock is None:
        phase.reason = _bound_hit(phase, max_attempts, "the guard caught no self-connect")
        return phase
    sock.close()
    phase.bind_error = _bind_error(port)
    phase.server_could_bind = phase.bind_error is None
    if phase.handed_back_self_connected:
        phase.reason = f"{phase.handed_back_self_connected} connect(s) returned a socket connected to itself"
    elif not phase.server_could_bind:
        phase.reason = f"a server could not bind port {port} right after: {phase.bind_error}"
    else:
        phase.demonstrated = True
    return phase


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _dials(n: int) -> str:
    return "1 dial" if n == 1 else f"{n:,} dials"


def _bound_hit(phase: Phase, max_attempts: int, what: str) -> str:
    bound = "--max-attempts" if phase.attempts >= max_attempts else "--max-seconds"
    return (
        f"{what} in {_dials(phase.attempts)} ({phase.seconds:.1f} s): {bound} reached before it happened; "
        "raise the bounds and run again"
    )


def reproduce(max_attempts: int, max_seconds: float, progress: _Progress) -> dict[str, Any]:
    """Run the unguarded phase, then (if it showed the bug) the guarded one; return the findings."""
    low, high = ephemeral_range()
    report: dict[str, Any] = {
        "ephemeral_range": [low, high],
        "max_attempts": max_attempts,
        "max_seconds": max_seconds,
        "phases": [],
    }
    # A guard installed by a sitecustomize would hide the bug from the first phase.
    uninstall()
    first = unguarded(free_port(connect_parity=True), max_attempts, max_seconds, progress)
    report["phases"].append(asdict(first))
    if not first.demonstrated:
        report.update(demonstrated=False, reason=f"unguarded: {first.reason}")
        return report
    # The first port is in TIME_WAIT for a minute: the second phase needs another.
    if not install(mode="enforce"):
        report.update(demonstrated=False, reason="guarded: SELFGUARD is off in the environment, install() did nothing")
        return report
    try:
        second = guarded(free_port(connect_parity=True, avoid=[first.port]), max_attempts, max_seconds, progress)
        report["stats"] = stats()
    finally:
        uninstall()
    report["phases"].append(asdict(second))
    report.update(demonstrated=second.demonstrated, reason=f"guarded: {second.reason}" if second.reason else "")
    return report


def render(report: dict[str, Any]) -> str:
    """The findings as text for a person."""
    low, high = report["ephemeral_range"]
    lines = [
        f"Dialling closed ports on 127.0.0.1 with fresh sockets until one connects to itself "
        f"(ephemeral ports {low}-{high}; at most {report['max_attempts']:,} dials or {report['max_seconds']:g} s "
        "per phase)",
        "",
    ]
    for number, phase in enumerate(report["phases"], 1):
        port, took = phase["port"], f"after {_dials(phase['attempts'])} in {phase['seconds']:.2f} s"
        bind = "OK" if phase["server_could_bind"] else f"fails: {phase['bind_error']}"
        if phase["name"] == "unguarded":
            lines.append(f"{number}. Without the guard, port {port}:")
            if phase["self_connects"]:
                lines += [
                    f"   a socket connected to itself {took}",
                    f"   it sent b'PING' and read back {phase['echo']}: its own request, as if a server answered",
                    f"   after close(), a server binding port {port}: {bind}"
                    + ("  <- TIME_WAIT, ~60 s" if not phase["server_could_bind"] else ""),
                ]
        else:
            lines.append(f"{number}. With selfguard.install(), port {port}:")
            if phase["self_connects"]:
                lines += [f"   [log] {message}" for message in phase["logged"]]
                lines += [
                    f"   the guard caught a self-connect {took}; the caller saw {phase['caller_saw']}",
                    f"   sockets handed back connected to themselves: {phase['handed_back_self_connected']}",
                    f"   right after, a server binding port {port}: {bind}",
                ]
        if not phase["demonstrated"]:
            lines.append(f"   not shown: {phase['reason']}")
    if "stats" in report:
        lines.append(f"   counters: {report['stats']}")
    lines.append("")
    if report["demonstrated"]:
        lines.append(
            "Shown: without the guard the loop met itself and kept the port from a server; "
            "with the guard it got a refusal and the port stayed free."
        )
    else:
        lines.append(f"Not shown: {report['reason']}")
    return "\n".join(lines)


DESCRIPTION = f"""\
Dial a closed port on 127.0.0.1 with fresh sockets until one connects to itself
(as `while true; do telnet 127.0.0.1 40000; done` does), then do it again with
selfguard installed. It needs no kernel option and no root.

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
    try:
        report = reproduce(args.max_attempts, args.max_seconds, _Progress(sys.stderr))
    except (OSError, ValueError, RuntimeError) as exc:
        # No free port, or sockets refused outright.
        raise CannotRun(f"cannot run here: {exc}") from exc
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK if report["demonstrated"] else EXIT_FOUND
