"""What the tests share besides fixtures (those are in conftest.py): skips, sockets, subprocesses, outcomes."""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
from typing import Any, Callable, Optional

import pytest

import selfguard
from selfguard.__main__ import main as selfguard_main
from selfguard.testing import can_force_self_connect

ON_CI = bool(os.environ.get("CI"))
LINGER_RST = struct.pack("ii", 1, 0)
FORCING = "needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE)"

# Every form of a local address a self-connect shows up with.
ADDRESS_FORMS = [
    (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET, "0.0.0.0"),
    (socket.AF_INET6, "::1"),
    (socket.AF_INET6, "::ffff:127.0.0.1"),
]


def require(condition: bool, reason: str) -> None:
    """Skip with *reason* when *condition* is false -- except on CI, where it must run."""
    if condition:
        return
    if ON_CI:
        pytest.fail(f"CI must be able to run this test, but: {reason}")
    pytest.skip(reason)


def require_speedups() -> None:
    """Skip unless the C accelerator is loaded: fail on CI, where the README's install builds it,
    except in the run that turned it off on purpose (SELFGUARD_SPEEDUPS=0: the pure-Python pass)."""
    from selfguard import _accel

    if _accel.why_not.startswith("turned off"):
        pytest.skip("SELFGUARD_SPEEDUPS turned the C accelerator off: this run tests the pure-Python wrappers")
    require(_accel.speedups is not None, f"needs the C accelerator: {_accel.why_not}")


def require_forcing() -> None:
    """Skip (fail on CI) unless this kernel can force self-connects (IP_LOCAL_PORT_RANGE, Linux >= 6.3).

    A file whose every test needs it says `pytestmark = pytest.mark.usefixtures("needs_forcing")`.
    """
    require(sys.platform.startswith("linux") and can_force_self_connect(), FORCING)


def close_rst(sock: socket.socket) -> None:
    """Close with RST, so a test's self-connected socket leaves no TIME_WAIT behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    except OSError:
        pass
    sock.close()


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server that does not set SO_REUSEADDR could bind *port* now."""
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        srv.bind((host, port))
    except OSError:
        return False
    finally:
        srv.close()
    return True


def port_in_time_wait(forced: Callable[[int], socket.socket], port: int) -> None:
    """Leave 127.0.0.1:port -> itself in TIME_WAIT, as an unguarded self-connect closed with close() does.

    A later connect from a socket forced onto *port* then fails with a
    spurious EADDRNOTAVAIL: the kernel's only choice of source port is taken.
    """
    sock = forced(port)
    sock.connect(("127.0.0.1", port))
    sock.close()  # plain close: TIME_WAIT for ~60 s


def full_backlog_server(port: int) -> list[socket.socket]:
    """A listener on *port* whose backlog is full: a further connect to it hangs until its timeout.

    listen(0) with one client not accepted: Linux drops further SYNs. Close
    both returned sockets when done.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(0)
    return [server, socket.create_connection(("127.0.0.1", port))]


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What *call* returned, or the type, errno and message of what it raised."""
    try:
        return ("returned", call())
    except BaseException as exc:  # the point is to compare every outcome
        return (type(exc), getattr(exc, "errno", None), str(exc))


def connection_state(sock: socket.socket) -> str:
    """Whether *sock* is connected, or the errno getpeername() gives."""
    try:
        sock.getpeername()
    except OSError as exc:
        return f"not connected ({exc.errno})"
    return "connected"


def same_with_and_without_guard(
    make: Callable[[], socket.socket],
    act: Callable[[socket.socket], Any],
    after_each: Optional[Callable[[], None]] = None,
) -> tuple[Any, ...]:
    """Run *act* on a fresh socket from *make*, unguarded then guarded: outcome and socket state must agree.

    Returns the common outcome. *after_each* runs after each of the two runs.
    """
    results = []
    for guarded in (False, True):
        if guarded:
            selfguard.install()
        sock = make()
        try:
            results.append((*outcome(lambda: act(sock)), connection_state(sock)))
        finally:
            sock.close()
            selfguard.uninstall()
            if after_each is not None:
                after_each()
    assert results[0] == results[1]
    return results[0]


def clean_environ(**overrides: str) -> dict[str, str]:
    """os.environ without any PYTHON* or SELFGUARD* variable of the outer run, plus *overrides*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SELFGUARD"))}
    return {**base, **overrides}


def under_sitecustomize(
    code: str, *flags: str, pythonpath: Optional[str] = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run *code* (python *flags* -c) in a fresh interpreter with selfguard's sitecustomize on PYTHONPATH.

    *pythonpath* replaces the bootstrap directory; *env* adds variables to a clean environment.
    """
    if pythonpath is None:
        from selfguard._commands.run import BOOTSTRAP

        pythonpath = BOOTSTRAP
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        env=clean_environ(PYTHONPATH=pythonpath, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


class _Parsed(Exception):
    """Raised in place of parsing: main() has built its parser, which is all the check needs."""


def selfguard_parser(monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The `selfguard` parser exactly as main() builds it, every command registered."""
    built: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        built.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        selfguard_main(["repro"])
    monkeypatch.undo()
    return built[0]


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}
