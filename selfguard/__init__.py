"""selfguard: keep TCP clients from connecting to themselves on Linux.

Call :func:`install` once at startup; see the README for options.
"""

from ._errors import SelfConnectError
from ._events import Event, add_listener, remove_listener, reset_stats, stats
from ._install import install, is_installed, status, uninstall
from ._kernel import is_self_connected

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


def __getattr__(name: str) -> str:
    # __version__ comes from _version when it is asked for (the CLI, the
    # exporters, a user): not a module more at every guarded process's first
    # connect, which imports this package. Outside install(), so no fork child
    # of the guard ever needs it.
    if name == "__version__":
        from ._version import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
