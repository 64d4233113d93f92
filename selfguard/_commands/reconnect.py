"""The reconnect loop behind `selfguard repro`: fresh unbound sockets dialling one closed local port, bounded."""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

from .. import is_self_connected, stats
from .cli import count

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
    parity: str = ""  # the port's: "even" or "odd"
    attempts: int = 0
    self_connects: int = 0
    self_connects_per_100000: Optional[float] = None  # self_connects for each 100,000 attempts
    # The 95% interval of the rate per 100,000 dials that one sample allows: see first_hit_interval.
    per_100000_95_interval: Optional[list[float]] = None
    seconds: float = 0.0
    echo: Optional[str] = None  # unguarded: what the socket read back after sending b"PING"
    caller_saw: Optional[str] = None  # guarded: what connect() told the caller when the guard caught one
    handed_back_self_connected: int = 0  # guarded: connects that returned a socket connected to itself
    logged: list[str] = field(default_factory=list)  # guarded: what the guard logged (logger "selfguard")
    server_could_bind: Optional[bool] = None  # a server without SO_REUSEADDR, right after the client closed
    bind_error: Optional[str] = None
    demonstrated: bool = False
    reason: str = ""  # why not demonstrated

    def __post_init__(self) -> None:
        self.parity = "odd" if self.port % 2 else "even"

    def count_self_connects(self, n: int) -> None:
        self.self_connects = n
        if self.attempts:
            self.self_connects_per_100000 = round(n * 100_000 / self.attempts, 1)
            if n:
                low, high = first_hit_interval(self.attempts)
                # Three significant digits: after 60,000 dials the low end is below 0.05, which
                # one decimal would print as 0.
                self.per_100000_95_interval = [float(f"{low * 100_000:.3g}"), float(f"{high * 100_000:.3g}")]


def first_hit_interval(dials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact interval for a per-dial chance p, from one sample: the first hit came at dial *dials*.

    A phase stops at its first self-connect, so what it measured is how many
    dials the first one took (a geometric sample), not a count over a fixed
    number of dials. The interval runs from the p under which a first hit by
    dial *dials* is that unlikely ((1 - confidence) / 2) to the p under which
    no hit in the *dials* - 1 dials before is that unlikely: the Clopper-Pearson
    construction for this stopping rule. For 1,261 dials: 2.0 to 292.3 per 100,000.
    """
    tail = (1 - confidence) / 2
    # 1 - (1 - p)**n = tail and (1 - p)**(n - 1) = tail, solved for p without cancelling digits.
    low = -math.expm1(math.log1p(-tail) / dials)
    high = -math.expm1(math.log(tail) / (dials - 1)) if dials > 1 else 1.0
    return low, high


def bind_error(port: int) -> Optional[str]:
    """Try to bind *port* as a server that does not set SO_REUSEADDR would; return the error, if any."""
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        return str(exc)
    finally:
        server.close()
    return None


class Progress:
    """One updating line on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on = stream.isatty()
        self.shown_at = 0.0

    def show(self, phase: Phase, now: float) -> None:
        if self.on and now - self.shown_at >= PROGRESS_EVERY:
            self.shown_at = now
            self.stream.write(
                f"\r  {phase.name}: {count(phase.attempts)} dials to port {phase.port}, {phase.seconds:.1f} s "
            )
            self.stream.flush()

    def clear(self) -> None:
        if self.on:
            self.stream.write("\r\033[K")
            self.stream.flush()


def dial(
    phase: Phase,
    max_attempts: int,
    max_seconds: float,
    progress: Progress,
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


def unguarded(port: int, max_attempts: int, max_seconds: float, progress: Progress) -> Phase:
    """Dial until a socket connects to itself; show it reads its own bytes and leaves the port held."""
    phase = Phase("unguarded", port)

    def met(sock: socket.socket, connected: bool) -> bool:
        return connected and is_self_connected(sock)

    sock = dial(phase, max_attempts, max_seconds, progress, met)
    if sock is None:
        phase.count_self_connects(0)
        phase.reason = _bound_hit(phase, max_attempts, "a socket connected to itself")
        return phase
    phase.count_self_connects(1)
    with sock:
        sock.sendall(b"PING")
        phase.echo = repr(sock.recv(4))
    # That close() is what a client does; the TIME_WAIT it leaves is the incident.
    phase.bind_error = bind_error(port)
    phase.server_could_bind = phase.bind_error is None
    phase.demonstrated = True
    return phase


def guarded(port: int, max_attempts: int, max_seconds: float, progress: Progress) -> Phase:
    """The same loop with selfguard installed, until the guard has caught a self-connect."""
    phase = Phase("guarded", port)
    before = stats()["self_connects"]
    # Keep the guard's log lines for the report; with a handler of its own,
    # the logger no longer falls back to writing them into the progress line.
    handler = Collect(phase.logged)
    logger = logging.getLogger("selfguard")
    logger.addHandler(handler)

    def caught(sock: socket.socket, connected: bool) -> bool:
        if connected and is_self_connected(sock):
            phase.handed_back_self_connected += 1
        return stats()["self_connects"] > before

    try:
        sock = dial(phase, max_attempts, max_seconds, progress, caught)
    finally:
        logger.removeHandler(handler)
    phase.count_self_connects(stats()["self_connects"] - before)
    if sock is None:
        phase.reason = _bound_hit(phase, max_attempts, "the guard caught a self-connect")
        return phase
    sock.close()
    phase.bind_error = bind_error(port)
    phase.server_could_bind = phase.bind_error is None
    if phase.handed_back_self_connected:
        phase.reason = f"{phase.handed_back_self_connected} connect(s) returned a socket connected to itself"
    elif not phase.server_could_bind:
        phase.reason = f"a server could not bind port {port} right after: {phase.bind_error}"
    else:
        phase.demonstrated = True
    return phase


class Collect(logging.Handler):
    """Keeps the messages of the log records it is handed."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def _bound_hit(phase: Phase, max_attempts: int, what: str) -> str:
    bound = "--max-attempts" if phase.attempts >= max_attempts else "--max-seconds"
    return f"{bound} reached before {what}; raise the bounds and run again"
