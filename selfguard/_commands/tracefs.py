"""A private tracefs instance for `selfguard watch`: made, filtered, read, and removed after any exit.

An instance (a directory under tracefs's instances/) has its own ring buffer,
event switches, filters and options: writing there leaves the host's top-level
tracing, and every other instance, as they were. Its name carries the
watcher's pid and start time, so a watcher that was killed with SIGKILL
before its guardian could remove the instance is swept by the next start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from typing import Optional

from .cli import CannotRun

MOUNT_POINTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PREFIX = "selfguard-watch-"
EVENT = "events/sock/inet_sock_set_state"
DESTROY_EVENT = "events/tcp/tcp_destroy_sock"

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mounted_tracefs() -> Optional[str]:
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    for fields in mounts:
        if len(fields) > 2 and fields[2] == "tracefs" and os.path.isdir(os.path.join(fields[1], "instances")):
            return fields[1]
    return None


def find_tracefs() -> str:
    """The tracefs mount point; where tracefs is not mounted, mount it in a mount namespace of this process alone.

    The private mount vanishes with the process, so the host's mount table is
    never changed. Raises CannotRun, saying what is missing.
    """
    mounted = _mounted_tracefs()
    if mounted:
        return mounted
    try:
        with open("/proc/filesystems") as f:
            known = f.read().split()
    except OSError as exc:
        raise CannotRun(f"cannot read /proc/filesystems: {exc.strerror}") from None
    if "tracefs" not in known:
        raise CannotRun("this kernel has no tracefs (built without CONFIG_TRACING): nothing to watch with")
    libc = _libc()
    target = MOUNT_POINTS[0].encode()
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise CannotRun(f"tracefs is not mounted and cannot be mounted here: {os.strerror(ctypes.get_errno())}")
    if libc.mount(b"nodev", target, b"tracefs", 0, None) != 0:
        raise CannotRun(
            f"tracefs is not mounted and cannot be mounted at {MOUNT_POINTS[0]} "
            f"({os.strerror(ctypes.get_errno())}): in a container, run the watcher on the host or mount "
            "/sys/kernel/tracing into it"
        )
    return MOUNT_POINTS[0]


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def sweep(root: str) -> list[str]:
    """Remove instances left by watchers that no longer run (killed with their guardian); return their names."""
    removed: list[str] = []
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid, _, started = name[len(PREFIX) :].partition("-")
        if pid.isdigit() and _start_time(int(pid)) == started:
            continue  # a watcher that still runs
        try:
            os.rmdir(os.path.join(root, "instances", name))
        except OSError:
            continue
        removed.append(name)
    return removed


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove(path: str, seconds: float) -> None:
    # rmdir fails with EBUSY while a reader still holds trace_pipe open (the
    # parent's fds are closed one after another as it exits): try a while.
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
        time.sleep(0.01)


class Instance:
    """One private tracefs instance with the socket-state and socket-destroy events on, filtered in the kernel."""

    def __init__(self, root: str, event_filter: str, destroy_filter: str, buffer_kb: int = 1024) -> None:
        self.pipe: Optional[int] = None
        pid = os.getpid()
        self.path = os.path.join(root, "instances", f"{PREFIX}{pid}-{_start_time(pid)}")
        for event in (EVENT, DESTROY_EVENT):
            if not os.path.isdir(os.path.join(root, event)):
                name = event[len("events/") :].replace("/", ":")
                raise CannotRun(f"this kernel has no {name} event ({os.path.join(root, event)})")
        try:
            os.mkdir(self.path)
        except OSError as exc:
            raise CannotRun(f"cannot make a tracing instance at {self.path}: {exc.strerror}") from None
        self._guardian = self._start_guardian()
        try:
            # Per CPU: ~10,000 events, time for a watcher the scheduler starves a while.
            _write(os.path.join(self.path, "buffer_size_kb"), str(buffer_kb))
            # mono: timestamps on time.monotonic()'s clock; fields: skaddr (the socket's
            # identity, which the event's own format leaves out) and numbers as numbers.
            # 0: wake the reader at the first event, not when the buffer is half full.
            _write(os.path.join(self.path, "buffer_percent"), "0")
            _write(os.path.join(self.path, "trace_clock"), "mono")
            _write(os.path.join(self.path, "options/fields"), "1")
            _write(os.path.join(self.path, "options/record-tgid"), "1")
            _write(os.path.join(self.path, EVENT, "filter"), event_filter)
            _write(os.path.join(self.path, DESTROY_EVENT, "filter"), destroy_filter)
            _write(os.path.join(self.path, EVENT, "enable"), "1")
            _write(os.path.join(self.path, DESTROY_EVENT, "enable"), "1")
            self.pipe = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.close()
            raise CannotRun(f"cannot set up the tracing instance {self.path}: {exc}") from None

    def _start_guardian(self) -> int:
        """Fork a child that removes the instance once this process is gone, however it ends (SIGKILL too).

        It waits for end-of-file on a pipe whose only writer is this process:
        the kernel closes it at any exit. Terminal signals meant for the
        watcher's process group (Ctrl-C) must not end it first.
        """
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.close(write_end)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_IGN)
                while os.read(read_end, 1):
                    pass
                _remove(self.path, 5.0)
            finally:
                os._exit(0)
        os.close(read_end)
        self._lifeline = write_end
        return child

    def close(self) -> None:
        """Switch the event off and remove the instance; the guardian then finds nothing left and exits."""
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None
        for event in (EVENT, DESTROY_EVENT):
            try:
                _write(os.path.join(self.path, event, "enable"), "0")
            except OSError:
                pass
        _remove(self.path, 2.0)
        os.close(self._lifeline)
        try:
            os.waitpid(self._guardian, 0)
        except ChildProcessError:
            pass
