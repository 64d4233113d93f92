"""The connect policy: every path that meets a self-connect or a spurious EADDRNOTAVAIL asks here what to do.

Blocking connects, asyncio's sock_connect, a non-blocking connect completed
by SO_ERROR or by a second connect, and any path added later all call the two
functions below, and do what the returned Action says. Events, counters,
the in-place reset and the "each handed-back socket is reported once" rule
all follow from here, so they are the same on every path.
"""

from __future__ import annotations

from . import _events, _native
from ._detect import is_inet
from ._events import Event
from ._kernel import disconnect
from ._state import in_range, remember, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Action:
    """What the caller does next: one of the three below, compared by identity (`action is Action.RETRY`).

    Not an enum.Enum: creating an Enum class costs ~0.2 ms of every guarded
    process's first connect, and nothing here needs more than three distinct values.
    """

    __slots__ = ("value",)
    RETRY: Action  # the socket was reset in place: connect it again
    HAND_BACK: Action  # give the caller what the kernel gave (a self-connected socket, the error)
    REFUSE: Action  # the socket was reset and no retry is left: report ECONNREFUSED (SelfConnectError)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<Action {self.value!r}>"


Action.RETRY, Action.HAND_BACK, Action.REFUSE = Action("retry"), Action("hand back"), Action("refuse")


def on_self_connect(sock: Any, local: Any, address: Any, api: str, attempt: int, can_retry: bool) -> Action:
    """Decide what follows attempt number *attempt* of *api*, which connected *sock* to itself.

    *can_retry* is False on paths where nobody waits to connect again (a
    non-blocking connect completed out of sight, a cancelled one, a timeout
    budget that is spent): the first attempt is then also the last. In
    "enforce" the socket is reset in place (RST: the port is free at once)
    before anything is reported, so a listener or log handler that raises
    cannot leave it connected to itself.
    """
    options = state.options
    if options is None or sock in state.handed_back:
        return Action.HAND_BACK  # uninstalled meanwhile, or handed back before: reported once is enough
    if _native.handed_back(sock):
        # The native guard (LD_PRELOAD) below met it first in libc, counted it and handed it
        # back as its settings say: decided and counted once.
        remember(state.handed_back, sock)
        return Action.HAND_BACK
    last = not can_retry or attempt > options.retries
    mode = options.mode
    kinds = ["self_connect"]
    if mode == "observe" or (last and mode == "relent"):
        action = Action.HAND_BACK
        if mode == "relent":
            kinds.append("relented")
    else:
        try:
            disconnect(sock)
        except Exception as exc:  # OSError from the kernel; ImportError without ctypes
            _events.fault("disconnecting a self-connected socket", exc, api)
            action = Action.HAND_BACK
        else:
            action = Action.REFUSE if last else Action.RETRY
            if last:
                kinds.append("gave_up")
    if action is Action.HAND_BACK:
        remember(state.handed_back, sock)
    for kind in kinds:
        _events.publish(Event(kind, api, local, address, attempt))
    if action is not Action.RETRY:
        _settle_self_connect(api, address, attempt, mode, kinds[-1])
    return action


def _settle_self_connect(api: str, address: Any, attempt: int, mode: str, last_kind: str) -> None:
    """The one log line of a connect whose self-connect the policy ended (gave up, handed back)."""
    attempts = f"{attempt} attempt{'s' if attempt > 1 else ''}"
    if last_kind == "gave_up":
        outcome, what = "gave_up", f"gave up after {attempts}: reported as connection refused"
    elif last_kind == "relented":
        outcome, what = "relented", f"relented after {attempts}: handed back connected to itself (mode relent)"
    elif mode == "observe":
        outcome, what = "handed_back", "handed back as it is (mode observe)"
    else:
        outcome, what = "handed_back", f"handed back on attempt {attempt}: the reset failed (a fault)"
    _events.settled(api, address, attempt, outcome, f"connected to itself; {what}")


def retried(api: str, address: Any, attempt: int, self_connect: bool, result: Any) -> None:
    """Log the one line of a connect whose retry, attempt *attempt*, ended it: *result* is 0 or its error.

    *self_connect*: whether an earlier attempt connected to itself (else
    every retry was for a spurious EADDRNOTAVAIL, which is logged at DEBUG).
    """
    name = "" if result == 0 else _error_name(result)
    if result == 0:
        outcome, end = "connected", "connected"
    elif name == "EINPROGRESS":  # a socket non-blocking below Python: checked when it completes
        outcome, end = "in_progress", "is in progress, checked when it completes"
    else:
        outcome, end = "failed", f"failed: {name}"
    if self_connect:
        what = f"connected to itself; reset and retried: attempt {attempt} {end}"
    else:
        what = f"retried: attempt {attempt} {end}"
    _events.settled(api, address, attempt, outcome, what, self_connect)


def _error_name(error: Any) -> str:
    """ECONNREFUSED for an errno or an OSError carrying it; the exception's type otherwise (a timeout, a cancel)."""
    import errno

    number = error if isinstance(error, int) else getattr(error, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        return errno.errorcode[number]
    return type(error).__name__


def on_addrnotavail(sock: Any, port: int, address: Any, api: str, attempt: int, can_retry: bool) -> Action:
    """Decide what follows an attempt that failed with EADDRNOTAVAIL: RETRY or HAND_BACK (the error as it is).

    Go's dialer retries it too: with a kernel-picked port it can be spurious
    (the port it picked was in TIME_WAIT towards that very address). Outside
    the ephemeral range, or on a socket the user bound, it cannot be.
    """
    options = state.options
    if options is None or not options.retry_addrnotavail or not in_range(port, sock) or not is_inet(sock):
        return Action.HAND_BACK
    if _bound(sock) or _native.watches(sock):
        return Action.HAND_BACK  # the user's port; or the native guard's EADDRNOTAVAIL, counted and retried below
    _events.publish(Event("addrnotavail", api, None, address, attempt))
    if not can_retry or attempt > options.retries:
        return Action.HAND_BACK  # EADDRNOTAVAIL every time: report the last one as it was
    return Action.RETRY


def _bound(sock: Any) -> bool:
    """Tell whether *sock* was bound to a port before its connect failed with EADDRNOTAVAIL.

    A socket the kernel was to pick a port for reports port 0 after such a
    failure; one bound beforehand (to an explicit port, or to port 0, which
    picks one at bind time) keeps its port, and connecting again from it
    meets the same clash. Asked of the kernel: binds are not remembered
    outside the range, and a syscall on this rare path costs nothing.
    """
    try:
        local = sock.getsockname()
    except OSError:
        return False
    return type(local) is tuple and len(local) > 1 and local[1] != 0


def retrying(api: str, address: Any, attempt: int, reason: str) -> None:
    """Report that attempt number *attempt* is about to be made, and why."""
    _events.publish(Event("retry", api, None, address, attempt, reason))
