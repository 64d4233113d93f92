"""`selfguard doctor --pid PID`: is that running process guarded, by which guard, or is there no such process?

Read from /proc/PID, never from the process itself: the Python guard's sign (a memfd
mapping, see _marker) and the native guard's library in /proc/PID/maps, SELFGUARD in
/proc/PID/environ. /proc/PID/maps needs root or the process's own user; without it the
answer is "cannot tell", never "not guarded".
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from .. import _marker, _native


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _command(pid: int) -> Optional[str]:
    try:
        return _read(f"/proc/{pid}/comm").decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def examine(pid: int) -> dict[str, Any]:
    """What guards process *pid*.

    state: "guarded", "not guarded", "no such process" or "cannot tell"; python: the
    Python guard's mode when it is active there, else None; native: whether the
    native guard is active there (None when that cannot be told); native_mode: its mode
    (SELFGUARD_MODE in /proc/PID/environ, parsed as the library parses it); detail: why,
    in words.
    """
    found: dict[str, Any] = {
        "pid": pid,
        "command": _command(pid),
        "python": None,
        "native": None,
        "native_mode": None,
    }
    try:
        maps = _read(f"/proc/{pid}/maps")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH):
            return {**found, "state": "no such process", "detail": f"no process {pid} in this PID namespace"}
        return {
            **found,
            "state": "cannot tell",
            "detail": f"cannot read /proc/{pid}/maps ({exc.strerror}): run as root or as the process's user",
        }
    found["python"] = _marker.python_guard_in(maps)
    found["native"] = _native.active_in(pid)
    guards = []
    if found["python"]:
        guards.append(f"Python guard active (mode {found['python']})")
    if found["native"]:
        found["native_mode"] = mode = _native.mode_in(pid)
        if mode is None:
            guards.append("native guard active (mode unknown: cannot read its environment)")
        elif mode == "observe":
            guards.append("native guard active (mode observe: it counts self-connects and changes no outcome)")
        else:
            guards.append(f"native guard active (mode {mode})")
    if guards:
        return {**found, "state": "guarded", "detail": ", ".join(guards)}
    return {
        **found,
        "state": "not guarded",
        "detail": (
            "neither guard is active (a Python process under the sitecustomize installs the guard at its first "
            "connect; the native guard needs selfguard run --native)"
        ),
    }


def describe(found: dict[str, Any]) -> str:
    """One line for a person."""
    command = f" ({found['command']})" if found.get("command") else ""
    return f"Process {found['pid']}{command}: {found['state']}: {found['detail']}"
