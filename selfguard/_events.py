"""Counters, listeners and log lines: everything the guard reports about what it saw."""

from __future__ import annotations

import _thread
import collections
import itertools
import os
import time

from . import _native  # os only: ctypes waits for the first question about the native guard
from ._errors import format_address

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, NamedTuple, Optional

# The logger is fetched when there is first something to log: importing
# logging costs ~4 ms, and the guard is imported into every process of a host
# that deploys the sitecustomize, most of which never see a self-connect.
_logger: Any = None


def logger() -> Any:
    """The logger "selfguard" (logging.Logger), imported on first use."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("selfguard")
    return _logger


# Event kind -> the counter it increments.
COUNTER_OF_KIND = {
    "self_connect": "self_connects",
    "retry": "retries",
    "gave_up": "gave_up",
    "relented": "relented",
    "addrnotavail": "addrnotavail",
    "fault": "faults",
}
COUNTERS = tuple(COUNTER_OF_KIND.values())


if TYPE_CHECKING:

    class _EventFields(NamedTuple):
        kind: str
        api: str
        local: Optional[tuple[Any, ...]]
        remote: Optional[tuple[Any, ...]]
        attempt: int
        detail: str = ""

    Listener = Callable[["Event"], Any]
else:  # the same fields, without importing typing
    _EventFields = collections.namedtuple("_EventFields", "kind api local remote attempt detail", defaults=("",))


class Event(_EventFields):
    """One thing the guard saw or did.

    kind: "self_connect", "retry", "gave_up", "relented", "addrnotavail" or "fault".
    api: the method that was called ("connect", "connect_ex").
    local, remote: the socket's own address and the address it dialled, as
        the socket module reports them (None where unknown).
    attempt: 1 for the first connect attempt, 2 for the first retry, ...
    detail: a short human-readable note (the reason for a retry, a fault).
    """

    __slots__ = ()


def _fresh_counters() -> dict[str, Any]:
    # Every counter is an itertools.count: next() is one C call, atomic under
    # the GIL, and takes no lock -- so a signal handler that lands mid-update
    # and calls stats() (or connects) cannot deadlock, and the hot "checked"
    # costs a fifth of a locked dict update. The value is read from its repr.
    return {name: itertools.count() for name in ("checked", *COUNTERS)}


_counters = _fresh_counters()
checked = _counters["checked"]
# The C wrappers' state (selfguard._speedups.State), set by _state: they count the
# connects they check themselves in its `checked`, a plain C integer.
fast: Any = None
# Only add_listener/remove_listener/forget take it, re-entrantly (a signal
# handler may call them while the main thread holds it). Copy-on-write, so
# publishing iterates without taking it.
_lock = _thread.RLock()
_listeners: tuple[Listener, ...] = ()
_logged_once: dict[str, object] = {}  # setdefault() claims a key atomically: one thread logs it
_delivering = _thread._local()  # per thread: is a listener running right now?


def _value(counter: Any) -> int:
    return int(repr(counter)[len("count(") : -1])


def stats() -> dict[str, int]:
    """Return a snapshot of the counters of this process.

    checked: successful connects to a port inside the ephemeral range that
        were examined; self_connects: self-connects seen; retries: attempts
        made again (after a self-connect or a spurious EADDRNOTAVAIL);
        gave_up: connects that self-connected on every attempt;
        relented: of those, the ones handed back connected (mode "relent");
        addrnotavail: spurious EADDRNOTAVAIL seen on kernel-picked ports;
        faults: failures of the guard's own machinery (it failed open).
    Where the native guard (selfguard run --native) is loaded, its counters
    are included, each self-connect counted once.
    """
    return _native.merge(own_stats(), _native.counters())


def own_stats() -> dict[str, int]:
    """The Python guard's own counters, without the native guard's."""
    counts = {name: _value(counter) for name, counter in _counters.items()}
    if fast is not None:
        counts["checked"] += fast.checked
    return counts


def reset_stats() -> None:
    """Set every counter back to zero."""
    global _counters, checked
    _counters = _fresh_counters()
    checked = _counters["checked"]
    if fast is not None:
        fast.checked = 0
    _native.reset_counters()


def forget() -> None:
    """Drop every listener, forget logged faults, refill the log's rate limit (for tests: selfguard.testing.reset)."""
    global _listeners
    with _lock:
        _listeners = ()
        _logged_once.clear()
        _bucket[:] = [float(LOG_BURST), 0.0, 0]


def add_listener(fn: Listener) -> None:
    """Call *fn* with every Event, on the connecting thread, as it happens.

    Exceptions from *fn* are caught, counted as faults and logged once; time
    spent in *fn* counts against the socket's timeout, which bounds the whole
    connect. Adding the same function twice has no effect. A non-callable
    raises TypeError at once.
    """
    if not callable(fn):
        raise TypeError(f"add_listener() needs a callable, got {type(fn).__name__}")
    global _listeners
    with _lock:
        if fn not in _listeners:
            _listeners = (*_listeners, fn)


def remove_listener(fn: Listener) -> None:
    """Stop calling *fn*; removing a function that was never added does nothing."""
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x != fn)


def publish(event: Event) -> None:
    """Count, log and hand *event* to the listeners.

    Raises nothing but a BaseException a listener or log handler raised
    (KeyboardInterrupt, gevent.Timeout): reporting must not break the connect
    it reports on, and the policy has reset the socket before it reports.
    """
    next(_counters[COUNTER_OF_KIND[event.kind]])
    try:
        _log(event)
    except Exception:  # a broken handler or formatter; nothing to log it with
        pass
    _deliver(event, report_errors=True)


def fault(
    what: str, exc: BaseException, api: str = "", outcome: str = "the connect proceeds as without the guard"
) -> None:
    """Record a failure of the guard's own machinery: counted always, logged once per kind."""
    next(_counters["faults"])
    claim = object()
    if _logged_once.setdefault(what, claim) is claim:
        _unlogged.append((what, exc, outcome))
    flush_unlogged()
    if _listeners:
        _deliver(Event("fault", api, None, None, 0, f"{what}: {type(exc).__name__}: {exc}"), report_errors=False)


# Faults whose line could not be written yet: logging is imported at the first
# line, and a fault at the fd limit (EMFILE) can't import it. The line waits
# for the next fault, or the next read of the range, to be written.
_unlogged: list[tuple[str, BaseException, str]] = []


def flush_unlogged() -> None:
    """Write the fault lines still waiting, once logging can be had."""
    while _unlogged:
        what, exc, outcome = _unlogged[0]
        try:
            logger().warning(
                "selfguard: %s failed (%s: %s); %s. "
                "Further failures of this kind are counted in stats()['faults'] but not logged.",
                what,
                type(exc).__name__,
                exc,
                outcome,
            )
        except Exception:
            return  # still no logging (or a handler that fails): tried again later
        del _unlogged[0]


def _deliver(event: Event, report_errors: bool) -> None:
    """Hand *event* to the listeners; an exception from one is a fault (or, for fault events, dropped).

    A listener that connects can meet a self-connect itself: the events of
    that connect (and faults during a listener call) are counted and logged,
    but not handed back to the listeners, or a listener could recurse without end.
    """
    if not _listeners or getattr(_delivering, "active", False):
        return
    _delivering.active = True
    try:
        for fn in _listeners:
            try:
                fn(event)
            except Exception as exc:
                if report_errors:
                    fault(f"listener {fn!r}", exc, event.api, "the guard carries on; each failing call is a fault")
    finally:
        _delivering.active = False


def _log(event: Event) -> None:
    # Each attempt's event is a detail, at DEBUG: the operator's line is the
    # one settled() logs when the connect is over.
    if logger().isEnabledFor(10):  # logging.DEBUG
        logger().debug(
            "%s: %s (%s, attempt %d) %s",
            event.kind,
            format_address(event.remote if event.local is None else event.local),
            event.api,
            event.attempt,
            event.detail,
        )


# The log of a self-connect storm (a reconnect loop in a namespace whose port
# range was narrowed: 2,000 dials, 8,000 WARNINGs before) is held to a token
# bucket: LOG_BURST lines at once, then one every LOG_INTERVAL seconds. A line
# let through says how many were held back before it. Counters and listeners
# see every event; only the log is limited.
LOG_BURST = 10
LOG_INTERVAL = 6.0
_bucket = [float(LOG_BURST), 0.0, 0]  # tokens, time of the last refill, lines held back


def _let_through(now: float) -> int:
    """-1 if the rate limit holds this line back, else how many lines it held back before it."""
    with _lock:  # re-entrant: a signal handler that connects mid-update takes it again
        tokens = min(float(LOG_BURST), _bucket[0] + (now - _bucket[1]) / LOG_INTERVAL)
        _bucket[1] = now
        if tokens < 1.0:
            _bucket[0] = tokens
            _bucket[2] += 1
            return -1
        _bucket[0] = tokens - 1.0
        held, _bucket[2] = _bucket[2], 0
        return int(held)


def settled(api: str, address: Any, attempts: int, outcome: str, what: str, self_connect: bool = True) -> None:
    """Log the one line for a connect the guard handled, once its outcome is known.

    *outcome* is a word a structured logger can group by ("gave_up",
    "relented", "handed_back", "connected", "failed", "in_progress"); *what* says it to a
    person. A connect that met a self-connect is a WARNING; one that only
    retried a spurious EADDRNOTAVAIL is a DEBUG line. The fields are also
    given as `extra=` (selfguard_api, selfguard_address, selfguard_attempts,
    selfguard_outcome, selfguard_held_back).
    """
    level = 30 if self_connect else 10  # logging.WARNING, logging.DEBUG
    try:
        log = logger()
        if not log.isEnabledFor(level):
            return
        held = _let_through(time.monotonic())
        if held < 0:
            return
        where = format_address(address)
        note = f" [{held} similar line(s) held back before this one]" if held else ""
        log.log(
            level,
            "%s: %s (%s) %s%s",
            "self-connect" if self_connect else "EADDRNOTAVAIL",
            where,
            api,
            what,
            note,
            extra={
                "selfguard_api": api,
                "selfguard_address": where,
                "selfguard_attempts": attempts,
                "selfguard_outcome": outcome,
                "selfguard_held_back": held,
            },
        )
    except Exception:  # a broken handler or formatter; nothing to log it with
        pass


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time; a
    # child that inherited it locked would deadlock on its first connect.
    # Counters are per process: a forked worker starts from zero, so summing
    # the workers' counters counts each event once. Only the Python guard's:
    # the native library zeroes its own in its own at-fork handler. Nothing is
    # imported here -- a module another thread was importing at fork time has
    # its import lock held for good in the child -- and every fork pays for
    # what runs here (reset_stats() once imported ctypes: 0.5 ms -> 5.8 ms).
    global _lock, _counters, checked
    _lock = _thread.RLock()
    _counters = _fresh_counters()
    checked = _counters["checked"]
    if fast is not None:
        fast.checked = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
