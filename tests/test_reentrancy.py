"""Code that runs inside the guard's reporting: signal handlers, listeners and log handlers that raise."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import selfguard

from helpers import can_bind, require_forcing

# The main thread self-connects (forced) as fast as it can, so the guard is
# publishing events nearly all the time; a 1 ms interval timer interrupts it
# with a handler that reads stats() and connects, as a "dump metrics on
# SIGUSR1" handler would. Bounded: at most 2 s of dialling.
SIGNAL_HANDLER = r"""
import json, signal, socket, sys, time
import selfguard
from selfguard.testing import force_self_connect, free_port

port, server_port = free_port(), int(sys.argv[1])
handled = 0

def handler(signum, frame):
    global handled
    handled += 1
    selfguard.stats()
    with socket.socket() as s:  # a connect from inside the handler, guarded too
        s.settimeout(5)
        s.connect_ex(("127.0.0.1", server_port))

selfguard.install()
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
deadline = time.monotonic() + 2
dials = 0
while time.monotonic() < deadline:
    s = socket.socket()
    force_self_connect(s, port)
    try:
        s.connect(("127.0.0.1", port))
    except selfguard.SelfConnectError:
        pass
    s.close()
    selfguard.stats()  # as a metrics exporter on the main thread would, also under the guard's lock until now
    dials += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps({"dials": dials, "handled": handled, "stats": selfguard.stats()}))
"""


def test_a_signal_handler_that_reads_stats_and_connects_never_deadlocks(free_port):
    """A handler landing while the guard reports cannot deadlock it: no lock on the reporting path is re-entered."""
    require_forcing()
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNAL_HANDLER, str(free_port())], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process deadlocked: a signal handler re-entered a lock the guard held")
    assert 0 == done.returncode, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["handled"] > 100, report
    assert 3 * report["dials"] <= report["stats"]["self_connects"], report


@pytest.mark.parametrize("where", ["listener", "log handler"])
@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_from_reporting_leaves_the_socket_reset(forced, free_port, where, exception):
    """A listener or log handler raising KeyboardInterrupt: the socket is reset first, then the exception goes on."""

    def interrupt(*args):
        raise exception()

    class Interrupting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            interrupt()

    handler = Interrupting()
    logger = logging.getLogger("selfguard")
    selfguard.install()
    if where == "listener":
        selfguard.add_listener(interrupt)
    else:
        logger.addHandler(handler)
    port = free_port()
    sock = forced(port)
    try:
        with pytest.raises(exception):
            sock.connect(("127.0.0.1", port))
    finally:
        logger.removeHandler(handler)
    assert not selfguard.is_self_connected(sock)
    sock.close()  # a plain close: with the socket reset, no TIME_WAIT is left behind
    assert can_bind(port)
