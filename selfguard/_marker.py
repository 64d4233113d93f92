"""A sign, readable from other processes, that the Python guard is active here: a named memory mapping.

`selfguard doctor --pid PID` must tell whether a running Python process is guarded.
Modules loaded (wrapt, selfguard) do not say it: imported is not installed, and
uninstall() leaves them loaded. So while the guard's options are in force, the
process maps one page of a memfd named "selfguard-python-guard:MODE"; it appears in
/proc/PID/maps, which doctor reads (root, or the process's own user).

Made at install() (the first connect under the sitecustomize), never at start-up:
four system calls (~0.04 ms). mmap is imported with selfguard (~0.4 ms of an import
that costs 15-60 ms with wrapt), not inside install(): a fork while another thread
imports it would leave the child unable to import it. No descriptor is
kept: a program that closes every fd keeps the sign. A fork keeps it, as it keeps
the guard; an exec drops it, as it drops the guard; uninstall() unmaps it.
"""

from __future__ import annotations

import mmap
import os

from . import _events

# Not `from typing import ...`: typing costs ~2.5 ms to import (see _state).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

NAME = "selfguard-python-guard"
_SIZE = 4096  # one page; never touched, so never backed by memory

_mapping: Optional[tuple[Any, str]] = None  # (the mmap object, the memfd's name)


def mark(mode: str) -> None:
    """Show the guard as active in *mode* (again after an install() that changed the mode)."""
    global _mapping
    name = f"{NAME}:{mode}"
    if _mapping is not None and _mapping[1] == name:
        return
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _SIZE)
            page = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
    except Exception as exc:  # no memfd (an old kernel, a seccomp filter): doctor --pid cannot see this guard
        what = "marking the guard active for `selfguard doctor --pid`"
        _events.fault(what, exc, outcome="the guard works; doctor cannot see it")
        return
    unmark()
    _mapping = (page, name)


def unmark() -> None:
    """Take the sign away: the guard is off (uninstall())."""
    global _mapping
    if _mapping is not None:
        page, _mapping = _mapping[0], None
        try:
            page.close()
        except Exception:
            pass


def python_guard_in(maps: bytes) -> Optional[str]:
    """The mode of the Python guard a process's /proc/PID/maps shows as active, or None."""
    marker = b"/memfd:" + NAME.encode() + b":"
    at = maps.find(marker)
    if at < 0:
        return None
    rest = maps[at + len(marker) :].split(b"\n", 1)[0]
    return rest.split(b" ", 1)[0].decode("ascii", "replace")
