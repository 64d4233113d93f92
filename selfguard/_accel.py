"""The optional C accelerator, selfguard._speedups: loaded unless SELFGUARD_SPEEDUPS turns it off or it can't be.

The pure-Python wrappers are always there and give the same outcomes; the C
ones settle the common connects faster and hand the rest to them. It can be
missing: built without a C compiler (the install then warns), or refused
at import because _socket.socket's layout is not the one it checked for.
"""

from __future__ import annotations

from . import _config

# Not `from typing import ...`: see _connect.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

speedups: Any = None
why_not = ""  # why the pure-Python wrappers run, when they do (selfguard.status(), the docs)

if not _config.speedups_enabled():
    why_not = "turned off by SELFGUARD_SPEEDUPS"
else:
    try:
        from . import _speedups as _loaded  # type: ignore[attr-defined,unused-ignore]  # built by setup.py
    except ImportError as exc:
        why_not = f"not loaded: {exc}"
    else:
        speedups = _loaded
