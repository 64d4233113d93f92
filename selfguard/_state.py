"""The guard's state, in one place: the options in force, the ephemeral range, and what it knows of sockets.

Global state department (as structlog has one): every mutable piece of the
guard lives on `state`. Only install() and uninstall() write the options,
through set_options(); the wrappers only read them, on every call, so an
uninstall() takes effect even where a wrapper cannot be removed because
someone patched on top of it. reset() puts everything back for tests.
"""

from __future__ import annotations

import contextvars
import time
import weakref

from . import _events, _marker
from ._kernel import read_ephemeral_range

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

    from ._config import Options

# A self-connect needs a kernel-picked source port, which always lies inside
# net.ipv4.ip_local_port_range; so does the destination port then. Connects to
# any port outside the range (80, 443, 5432, 6379, ...) skip every syscall.
# The cached range is re-read at most every RANGE_REFRESH seconds.
RANGE_REFRESH = 1.0
_monotonic = time.monotonic


class _State:
    __slots__ = ("delegated", "handed_back", "high", "low", "options", "range_read_at", "user_bound")

    def __init__(self) -> None:
        # None while the guard is not installed.
        self.options: Optional[Options] = None
        self.low, self.high = 0, -1  # empty: the first connect reads the real range
        self.range_read_at = float("-inf")
        # Sockets bound to an explicit, non-zero port: the user chose that
        # port, so a connect to it from itself is deliberate and left alone.
        # Finding this out at connect time would cost a getsockname() on every
        # connect; remembering the bind costs nothing on connects.
        self.user_bound: weakref.WeakSet[Any] = weakref.WeakSet()
        # Self-connected sockets handed back as they are (observe, relent, a
        # failed reset): reported once, not again at every later SO_ERROR read.
        self.handed_back: weakref.WeakSet[Any] = weakref.WeakSet()
        # Set while a layer that can retry (asyncio's sock_connect) checks the
        # connects it makes itself: the SO_ERROR check stands back.
        self.delegated: contextvars.ContextVar[bool] = contextvars.ContextVar("selfguard_delegated", default=False)


state = _State()


def set_options(options: Optional[Options]) -> None:
    """Put *options* in force (None: the guard is off). Called by install() and uninstall() only.

    Other processes see the change too (`selfguard doctor --pid`): see _marker.
    """
    state.options = options
    if options is None:
        _marker.unmark()
    else:
        _marker.mark(options.mode)


def in_range(port: int) -> bool:
    """Tell whether *port* lies in the ephemeral range, re-reading the range when it is due.

    The cached range answers at once for ports inside it; only a port outside
    it pays for the clock, so a range that widened is seen within
    RANGE_REFRESH seconds.
    """
    if state.low <= port <= state.high:
        return True
    now = _monotonic()
    if now - state.range_read_at <= RANGE_REFRESH:
        return False
    try:
        low, high = read_ephemeral_range()
    except (OSError, ValueError) as exc:
        # Fail open towards checking: with the range unknown, every port is
        # a candidate. Costs a syscall per TCP connect, never misses one.
        low, high = 1, 65535
        _events.fault("reading the ephemeral port range", exc)
    # The cache only widens. A range that narrowed costs checks that find
    # nothing; but a thread that setns()'d into another network namespace
    # reads that namespace's range, and replacing the cache with it would
    # leave this namespace's ports unchecked until the next refresh.
    if state.low <= state.high:
        low, high = min(low, state.low), max(high, state.high)
    # The time is stamped only once the range is in place: the read releases
    # the GIL, and other threads must not take a fresh stamp over an empty or
    # half-written range as "outside it" (they read the file themselves).
    state.low, state.high = low, high
    state.range_read_at = now
    return low <= port <= high


def remember(sockets: weakref.WeakSet[Any], sock: Any) -> None:
    """Add *sock* to one of the state's sets; a socket class without weakref support cannot be remembered."""
    try:
        sockets.add(sock)
    except TypeError:
        pass


def reset() -> None:
    """Forget the range and every remembered socket (the options are uninstall()'s to clear)."""
    state.low, state.high = 0, -1
    state.range_read_at = float("-inf")
    state.user_bound = weakref.WeakSet()
    state.handed_back = weakref.WeakSet()
