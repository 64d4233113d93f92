"""The guard's state, in one place: the options in force, the ephemeral range, and what it knows of sockets.

Global state department (as structlog has one): every mutable piece of the
guard lives on `state`. Only install() and uninstall() write the options,
through set_options(); the wrappers only read them, on every call, so an
uninstall() takes effect even where a wrapper cannot be removed because
someone patched on top of it. reset() puts everything back for tests.
"""

from __future__ import annotations

# The C modules behind contextvars and weakref: the same classes, without loading
# weakref.py (and what it imports) at every guarded process's first connect.
import _contextvars
import _weakref
import errno
import sys
import time

from . import _events, _marker
from ._accel import speedups
from ._kernel import netns_cookie, read_ephemeral_range, thread_netns_cookie

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextvars import ContextVar
    from typing import Any, Optional
    from weakref import ref

    from ._config import Options

# A self-connect needs a kernel-picked source port, which always lies inside
# the ip_local_port_range of the socket's own network namespace; so does the
# destination port then. Connects to any port outside the range (80, 443,
# 5432, 6379, ...) skip the self-connect check.
#
# The range is a per-namespace sysctl, and a file read tells the range of the
# reading thread's namespace only. The cache holds one namespace's range (the
# first one read: the process's, as a rule), named by its SO_NETNS_COOKIE.
# A port inside it is checked without asking anything (a check that finds
# nothing costs one getsockname()). A port outside it is skipped only once the
# socket's own namespace is known to be the cached one: one getsockopt(), no
# fd, about half a getsockname(). A socket of another namespace -- made by a
# thread that setns()'d, or handed over from one -- is judged by that
# namespace's range, read by a thread that is in it, and checked on every
# port while none is. The cached range is re-read when a port outside it is
# dialled more than RANGE_REFRESH seconds after the last read. The read is
# three syscalls on a sysctl file served from memory (non-blocking: fine on
# an event loop's thread), and a failed one costs one fault: every port is
# checked until the next read puts the range back.
RANGE_REFRESH = 1.0
_MAX_NAMESPACES = 64  # ranges of other namespaces kept; namespaces come and go, their cookies are never reused
_monotonic = time.monotonic
_ENOPROTOOPT = errno.ENOPROTOOPT


class SocketSet:
    """Sockets remembered weakly by identity: neither the socket's __hash__ nor its __eq__ is called.

    A socket.socket subclass may define __eq__ and so be unhashable; a
    WeakSet would raise TypeError for it (and would call a user's __hash__).
    A socket class without weakref support cannot be remembered: add() then
    answers False.
    """

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[int, ref[Any]] = {}

    def add(self, sock: Any) -> bool:
        key, refs = id(sock), self._refs

        def forget(ref: ref[Any]) -> None:
            # Runs as the socket is freed, before its id can be reused.
            if refs.get(key) is ref:
                refs.pop(key, None)

        try:
            refs[key] = _weakref.ref(sock, forget)
        except TypeError:
            return False
        return True

    def discard(self, sock: Any) -> bool:
        """Forget *sock*; tell whether it was remembered."""
        ref = self._refs.get(id(sock))
        if ref is None or ref() is not sock:
            return False
        self._refs.pop(id(sock), None)
        return True

    def __contains__(self, sock: Any) -> bool:
        ref = self._refs.get(id(sock))
        return ref is not None and ref() is sock

    def __len__(self) -> int:
        return len(self._refs)


class _State:
    __slots__ = (
        "delegated",
        "fast",
        "foreign",
        "handed_back",
        "high",
        "low",
        "netns",
        "options",
        "pending",
        "range_known",
        "range_read_at",
        "user_bound",
    )

    def __init__(self) -> None:
        # None while the guard is not installed.
        self.options: Optional[Options] = None
        self.low, self.high = 0, -1  # empty: the first connect outside it reads the real range
        self.range_read_at = float("-inf")
        self.range_known = False  # False while the last read failed: every port is checked
        # The SO_NETNS_COOKIE of the namespace whose range is cached; None before
        # the first read, b"" where the kernel can't tell (before Linux 5.14).
        self.netns: Optional[bytes] = None
        # Other namespaces met: cookie -> (low, high, read at).
        self.foreign: dict[bytes, tuple[int, int, float]] = {}
        # Sockets bound to an explicit, non-zero port: the user chose that
        # port, so a connect to it from itself is deliberate and left alone.
        # Finding this out at connect time would cost a getsockname() on every
        # connect; remembering the bind costs nothing on connects.
        self.user_bound = SocketSet()
        # Self-connected sockets handed back as they are (observe, relent, a
        # failed reset): reported once, not again at every later SO_ERROR read.
        self.handed_back = SocketSet()
        # Non-blocking connects to a port the guard checks, started and not yet
        # completed: the SO_ERROR read that completes one checks it, later
        # reads of a connected socket pass through.
        self.pending = SocketSet()
        # Set while a layer that can retry (asyncio's sock_connect) checks the
        # connects it makes itself: the SO_ERROR check stands back.
        self.delegated: ContextVar[bool] = _contextvars.ContextVar("selfguard_delegated", default=False)
        # What the C wrappers read of all this (selfguard._speedups), kept equal by sync().
        self.fast: Any = speedups.State() if speedups is not None else None


state = _State()
_events.fast = state.fast


def sync() -> None:
    """Copy what the C wrappers read -- options on or off, the cached range, its namespace -- to state.fast.

    Called by every writer of those fields. The C code settles a connect
    itself only while the range is known and not due for a re-read; otherwise
    it calls the Python wrapper, which reads and writes them here.
    """
    fast = state.fast
    if fast is None:
        return
    fast.on = state.options is not None
    fast.delegated = state.delegated.get
    fast.low, fast.high = state.low, state.high
    fast.known = state.range_known
    fast.refresh_at = state.range_read_at + RANGE_REFRESH
    fast.cookie_known = bool(state.netns)
    fast.cookie = int.from_bytes(state.netns, sys.byteorder) if state.netns else 0


def set_options(options: Optional[Options]) -> None:
    """Put *options* in force (None: the guard is off). Called by install() and uninstall() only.

    Other processes see the change too (`selfguard doctor --pid`): see _marker.
    """
    state.options = options
    sync()
    if options is None:
        _marker.unmark()
    else:
        _marker.mark(options.mode)


def in_range(port: int, sock: Any = None) -> bool:
    """Tell whether *port* may be one the kernel picks for *sock*: inside its namespace's ephemeral range.

    The cached range answers at once for ports inside it. Outside it, the
    socket's namespace is asked (without *sock*: the cached namespace is
    assumed) and the range re-read when it is due. Never raises and never
    blocks: whatever goes wrong -- even a connect from a __del__ during
    interpreter shutdown -- answers True, so the port is checked.
    """
    if state.low <= port <= state.high:
        return True
    try:
        return _outside_the_cache(port, sock)
    except Exception as exc:
        try:
            _events.fault("reading the ephemeral port range", exc)
        except Exception:
            pass
        return True


def _outside_the_cache(port: int, sock: Any) -> bool:
    now = _monotonic()
    if sock is not None and state.netns:
        try:
            cookie = netns_cookie(sock)
        except (OSError, AttributeError, TypeError):
            cookie = state.netns  # a closed socket (the connect fails anyway), or a socket-like class that can't say
        if cookie != state.netns:
            return _in_foreign_range(port, cookie, now)
    if now - state.range_read_at > RANGE_REFRESH:
        _refresh(now)
        # Read from a thread in another namespace, the cached range stays as it
        # was: it is tried again in a second, not at every connect meanwhile.
        state.range_read_at = now
        sync()
        if state.low <= port <= state.high:
            return True
    return not state.range_known


def _in_foreign_range(port: int, cookie: bytes, now: float) -> bool:
    """*port* against the range of the namespace *cookie*, which is not the cached one."""
    known = state.foreign.get(cookie)
    if known is None or now - known[2] > RANGE_REFRESH:
        _refresh(now)
        known = state.foreign.get(cookie)
        if known is None or known[2] != now:
            # This thread is elsewhere: that range can't be read from here. Every
            # port is checked for a while, then a thread there may read it.
            known = _remember_foreign(cookie, (1, 65535, now))
    return known[0] <= port <= known[1]


def _remember_foreign(cookie: bytes, entry: tuple[int, int, float]) -> tuple[int, int, float]:
    if len(state.foreign) >= _MAX_NAMESPACES and cookie not in state.foreign:
        state.foreign.clear()
    state.foreign[cookie] = entry
    return entry


def _refresh(now: float) -> None:
    """Read the range of the calling thread's namespace, and put it where that namespace's range goes."""
    try:
        cookie = _thread_cookie()
        low, high = read_ephemeral_range()
    except Exception as exc:  # OSError, ValueError; EMFILE at the fd limit is transient
        _events.fault("reading the ephemeral port range", exc)
        # Every port is checked until the next read, a second from now, puts
        # the range back: one fault, not a range of 1-65535 for good.
        state.range_known = False
        state.range_read_at = now
        sync()
        return
    if state.netns is None:
        state.netns = cookie
    if cookie != state.netns:
        _remember_foreign(cookie, (low, high, now))
        return
    state.low, state.high = low, high
    state.range_known = True
    if _events._unlogged:
        _events.flush_unlogged()  # a fault at the fd limit could not be logged then
    # The time is stamped only once the range is in place: the read releases
    # the GIL, and other threads must not take a fresh stamp over an empty or
    # half-written range as "outside it" (they read the file themselves).
    state.range_read_at = now
    sync()


def _thread_cookie() -> bytes:
    try:
        return thread_netns_cookie()
    except OSError as exc:
        if exc.errno == _ENOPROTOOPT:
            return b""  # before Linux 5.14: namespaces can't be told apart, the cache holds the thread's range
        raise


def remember(sockets: SocketSet, sock: Any) -> None:
    """Add *sock* to one of the state's sets; a socket class without weakref support cannot be remembered."""
    sockets.add(sock)


def reset() -> None:
    """Forget the range and every remembered socket (the options are uninstall()'s to clear)."""
    state.low, state.high = 0, -1
    state.range_read_at = float("-inf")
    state.range_known = False
    state.netns = None
    state.foreign = {}
    state.user_bound = SocketSet()
    state.handed_back = SocketSet()
    state.pending = SocketSet()
    sync()
