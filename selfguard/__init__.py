"""selfguard: keep TCP clients from connecting to themselves on Linux.

Call :func:`install` once at startup; see the README for options.
"""

from ._errors import SelfConnectError
from ._events import Event, add_listener, remove_listener, reset_stats, stats
from ._install import install, is_installed, status, uninstall
from ._kernel import is_self_connected
from ._version import __version__

__all__ = [
    "Event",
    "SelfConnectError",
    "__version__",
    "add_listener",
    "install",
    "is_installed",
    "is_self_connected",
    "remove_listener",
    "reset_stats",
    "stats",
    "status",
    "uninstall",
]
