"""install() and uninstall(): putting the wrappers on socket.socket and taking them off exactly."""

from __future__ import annotations

import _thread
import os
import socket
import sys

import wrapt

from . import _config, _state
from ._connect import bind_wrapper, make_connect_wrapper
from ._fastopen import make_send_wrapper
from ._nonblocking import getsockopt_wrapper

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_WRAPPERS: dict[str, Callable[..., Any]] = {
    "connect": make_connect_wrapper("connect"),
    "connect_ex": make_connect_wrapper("connect_ex"),
    "getsockopt": getsockopt_wrapper,
    "bind": bind_wrapper,
    "sendto": make_send_wrapper("sendto"),
    "sendmsg": make_send_wrapper("sendmsg"),
}
lock = _thread.RLock()
# (class, name) -> (the FunctionWrapper we put there, what vars() held before).
# socket.socket; gevent's socket class once its monkey-patching replaced
# socket.socket after install(); the event loops' connecting methods.
_patched: dict[tuple[type, str], tuple[Any, Any]] = {}
_ABSENT: Any = object()


def install(**options: Any) -> bool:
    """Guard every TCP connect of this process against self-connection.

    Options (see the README for each, and SELFGUARD_* for the environment
    variables): mode, retries, retry_addrnotavail. Explicit arguments win over
    the environment, which wins over the defaults. Calling install() again
    replaces the options, each resolved afresh. Returns False, changing
    nothing, when SELFGUARD is set to 0/false/off.
    """
    with lock:
        if not _config.enabled():
            return False  # the operator's off switch: not even the arguments are looked at
        activate(_config.resolve(options))
        return True


def activate(options: _config.Options) -> None:
    """Patch the current socket.socket class (where not yet patched) and put *options* in force."""
    with lock:
        _forget_stand_ins()
        for name, wrapper in _WRAPPERS.items():
            wrap(socket.socket, name, wrapper)
        _state.set_options(options)
        from . import _loops  # after the options: its patch reads them

        _loops.watch()


def wrap(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    """Put *wrapper* around cls.name, unless ours is still there; uninstall() takes it off."""
    with lock:
        key = (cls, name)
        if key in _patched and not _reachable(key):
            del _patched[key]  # someone removed the chain ours was in
        if key not in _patched:
            before = vars(cls).get(name, _ABSENT)
            _patched[key] = (wrapt.wrap_function_wrapper(cls, name, wrapper), before)


def uninstall() -> None:
    """Restore socket.socket (and the event loops) exactly as they were; a patch someone applied on top survives."""
    with lock:
        _forget_stand_ins()
        _state.set_options(None)
        for key, (ours, before) in list(_patched.items()):
            cls, name = key
            if vars(cls).get(name) is ours:
                if before is _ABSENT:
                    # connect is inherited from _socket.socket: deleting our
                    # attribute restores the original itself, not a copy.
                    delattr(cls, name)
                else:
                    setattr(cls, name, before)
                del _patched[key]
            elif not _reachable(key):
                del _patched[key]  # someone already removed it
            # Otherwise someone wrapped ours: removing it would remove theirs
            # too. Ours stays in their chain as a passthrough (no options) and the next install() reuses it.


def _reachable(key: tuple[type, str]) -> bool:
    """Tell whether our wrapper is still on its class, directly or inside other wrappers."""
    cls, name = key
    ours = _patched[key][0]
    current = vars(cls).get(name)
    for _ in range(100):  # wrappers of wrappers; bounded in case of a cycle
        if current is ours:
            return True
        current = getattr(current, "__wrapped__", None)
        if current is None:
            return False
    return False


def _forget_stand_ins() -> None:
    # selfguard's sitecustomize may have put stand-ins on socket.socket that
    # wait for the first connect to install the guard: install() and
    # uninstall() take over from them, so they must go first (and stay gone).
    forget = getattr(sys.modules.get("sitecustomize"), "selfguard_forget", None)
    if forget is not None:
        forget()


_guards_for: dict[tuple[Any, str], Any] = {}


def guard_for(original: Any, name: str) -> Any:
    """The guard's wrapper around *original* (a method of a socket class), for the sitecustomize's stand-ins."""
    key = (original, name)
    guard = _guards_for.get(key)
    if guard is None:
        guard = _guards_for[key] = wrapt.FunctionWrapper(original, _WRAPPERS[name])
    return guard


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock would leave it held for good.
    global lock
    lock = _thread.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_installed() -> bool:
    """Tell whether the guard is active in this process."""
    return _state.state.options is not None
