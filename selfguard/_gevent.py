"""gevent: guard the socket class gevent's monkey-patching puts in place, whichever came first.

gevent's socket class is wrapped as soon as gevent._socket3 is imported,
monkey-patched or not (_install.watch_loops(), and the sitecustomize's stand-ins):
that covers socket.socket after patch_all() too. This plugin is the second
path, kept for a gevent whose patched class is not that one, and because
installs made before may still name it in their entry points.
"""

from __future__ import annotations

import socket
from typing import Any

from . import _install
from ._state import state


def did_patch_module(event: Any) -> None:
    """gevent plugin (entry point gevent.plugins.monkey.did_patch_module).

    gevent calls it after each module it monkey-patches. When socket was
    patched while the guard is installed, socket.socket is now gevent's own
    class: make sure it is patched (it is already, by the import hook, for
    every gevent this was tested with). With the guard installed after the
    monkey-patching, install() finds gevent's class by itself.
    """
    if getattr(event, "module_name", None) != "socket":
        return
    with _install.lock:
        if state.options is not None:
            _install.activate(state.options)
            return
    # Not installed yet, but selfguard's sitecustomize may be waiting for the
    # first connect: let gevent's class wait with it.
    defer = getattr(_install.bootstrap(), "selfguard_defer", None)
    if defer is not None:
        defer(socket.socket)
