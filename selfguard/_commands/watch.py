"""`selfguard watch`: report every TCP self-connect the kernel makes on this host, and what became of it.

The kernel's `sock:inet_sock_set_state` event fires for every TCP state
change in every network namespace, and `tcp:tcp_destroy_sock` when a socket is
freed. Filters in the kernel pass on only what is rare on a healthy host (see
FILTER and DESTROY_FILTER): self-connects, aborts, simultaneous closes, sockets
freed after a disconnect. An ordinary connection costs the watcher nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional, TextIO

from .._kernel import parse_port_list
from . import sockdiag as _sockdiag
from . import tracefs as _tracefs
from .cli import EXIT_CANNOT_RUN, EXIT_OK, EXIT_USAGE, CannotRun, positive_count, positive_seconds

if TYPE_CHECKING:
    from .cli import Commands

ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE = 1, 2, 3, 4, 5, 6, 7
CLOSE_WAIT, LAST_ACK, CLOSING = 8, 9, 11

# SYN_SENT -> SYN_RECV is a simultaneous open: in practice only a socket meeting itself.
# ESTABLISHED -> CLOSE is an abort (a guard's in-place reset, SO_LINGER 0, SOCK_DESTROY);
# -> CLOSING a simultaneous close, which is how a self-connected socket closed by its
# program ends (and, rarely, an ordinary one whose two ends close at the same instant).
# Ordinary transitions (SYN_SENT -> ESTABLISHED, FIN_WAIT1, TIME_WAIT...) never pass,
# nor do refused dials (SYN_SENT -> CLOSE).
FILTER = f"(oldstate == {SYN_SENT} && newstate == {SYN_RECV}) || (oldstate == {ESTABLISHED} && newstate == {CLOSE})"
FILTER += f" || newstate == {CLOSING}"

# A socket destroyed with no destination port was disconnected: reset in place by a
# guard, closed abortively, or a failed connect (the kernel disconnects those too). For a
# followed socket, the source port the event shows tells whether it was dialled again.
DESTROY_FILTER = "dport == 0 && sport != 0"

# The states --reset ends a self-connected socket in: connected, or closing, or the
# TIME_WAIT a plain close() leaves (SOCK_DESTROY ends that too, and the port is free).
RESET_STATES = sum(1 << s for s in (ESTABLISHED, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING))

ALL_STATES = 0xFFF & ~(1 << 10)  # every TCP state but LISTEN

# How long the watcher sleeps between reads when it follows nothing.
IDLE = 0.02

# How long a guard gets to reset a self-connect in place before --reset ends it.
GRACE = 0.005

OUTCOMES = {
    "caught": "a guard reset it in place and dialled again (or: reset in place, still alive after --settle)",
    "reset": "reset in place and closed without a new dial: a guard that gave up, or an abortive close",
    "closed": "reached the program, which closed it",
    "open": "reached the program: still connected after --settle",
    "ended": "ended by this watcher (--reset): the port is free",
    "unknown at exit": "still followed when the watcher stopped, for less than --settle (a second Ctrl-C)",
}

# comm-tid (tgid) [cpu] flags timestamp: inet_sock_set_state: skaddr=0x... (...) oldstate=0x2 (2) ...
LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+\(\s*(?P<tgid>[-\d]+)\)\s+\[\d+\]\s+(?P<flags>\S+)\s+(?P<ts>[\d.]+):"
    r" inet_sock_set_state: skaddr=0x(?P<sk>[0-9a-f]+) .*?oldstate=\S+ \((?P<old>\d+)\) newstate=\S+ \((?P<new>\d+)\)"
    r" sport=\S+ \((?P<sport>\d+)\) dport=\S+ \((?P<dport>\d+)\) family=\S+ \((?P<family>\d+)\)"
    r" protocol=\S+ \((?P<protocol>\d+)\) saddr=\S+ \((?P<saddr>-?\d+)\) daddr=\S+ \((?P<daddr>-?\d+)\)"
)
SELF_OPEN = f"oldstate=0x{SYN_SENT:x} ({SYN_SENT}) newstate=0x{SYN_RECV:x} ({SYN_RECV}) "
DESTROYED_SPORT = re.compile(r" sport=0x[0-9a-f]+ \((\d+)\)")
LOST = re.compile(r"CPU:\d+ \[LOST (\d+) EVENTS\]")

DESCRIPTION = f"""\
Report every TCP self-connect the kernel makes on this host, in every network
namespace (containers too), whatever the program's language or linking: one
line each, once its outcome is known, and a summary per program and port at
the end. Needs root. It reads a private tracefs instance (nothing to install)
and leaves the host's other tracing alone.

outcomes:
{chr(10).join(f"  {name:7} {text}" for name, text in OUTCOMES.items())}
A guard that hands a self-connect back (relent, observe) looks to the kernel
like no guard at all: it shows as closed or open.

exit status:
  {EXIT_OK}  stopped (Ctrl-C, SIGTERM, SIGHUP, --duration or --count); the events
     already buffered are read and what is still followed gets up to --settle first
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: not root, no tracefs, or no such kernel event (says what is missing)"""


@dataclass
class Episode:
    """One self-connect: a socket that met itself, followed until its outcome is known."""

    sk: str
    seen: float  # time.monotonic() clock
    pid: int
    tid: int
    comm: str
    pid_sure: bool
    family: int
    address: Optional[str]
    port: int
    netns: Optional[int] = None
    cgroup: Optional[str] = None
    netns_fd: Optional[int] = None  # held for --reset: the namespace outlives a process that exits
    aborted: Optional[float] = None  # when ESTABLISHED -> CLOSE was seen
    reset_sent: bool = False
    reset_due: Optional[float] = None
    outcome: Optional[str] = None
    detail: dict[str, Any] = field(default_factory=dict)


def _address(family: int, raw: int) -> Optional[str]:
    if family == socket.AF_INET:
        return socket.inet_ntoa((raw & 0xFFFFFFFF).to_bytes(4, "little"))
    return None  # the event's IPv6 fields are not printed in this mode: looked up when it matters


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _ns_path(pid: int, tid: int) -> str:
    # The thread's own namespace: a thread may have entered another one (setns, unshare)
    # than the main thread's, which /proc/PID/ns/net shows.
    return f"/proc/{pid}/task/{tid or pid}/ns/net"


def _netns(pid: int, tid: int = 0) -> Optional[int]:
    try:
        link = os.readlink(_ns_path(pid, tid))  # "net:[4026531840]"
    except OSError:
        return None
    return int(link[link.index("[") + 1 : -1])


def _in_task(flags: str) -> bool:
    # The flags' third column is "." in task context: the task is the socket's own. In a
    # (soft)irq the pid is whichever task the interrupt found running.
    return len(flags) > 2 and flags[2] == "."


def _tgid(tid: int) -> int:
    # The trace prints dashes where it has no thread group id saved yet.
    for line in (_read(f"/proc/{tid}/status") or "").splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return tid


def _cgroup(pid: int) -> Optional[str]:
    text = _read(f"/proc/{pid}/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


class Watcher:
    """Follows self-connected sockets by their kernel address and decides each one's outcome."""

    def __init__(
        self, out: TextIO, as_json: bool, settle: float, reset_ports: list[tuple[int, int]], count: Optional[int] = None
    ) -> None:
        self.out = out
        self.count = count
        self.as_json = as_json
        self.settle = settle
        self.reset_ports = reset_ports
        self.following: dict[str, Episode] = {}
        self.reported = 0
        self.events = 0  # lines the kernel's filters passed: what watching this host costs
        self.lost = 0
        self.summary: Counter[tuple[str, int, str]] = Counter()
        self.clock_offset = time.time() - time.monotonic()
        # What each process's namespace and cgroup were when last read: the watcher may
        # read a process's later self-connects after it is gone.
        self._namespaces: dict[int, Optional[int]] = {}
        self._cgroups: dict[int, Optional[str]] = {}

    def _netns(self, pid: int, tid: int) -> Optional[int]:
        netns = _netns(pid, tid)
        if netns is None:  # gone: what it was when last seen, if it was
            return self._namespaces.get(tid)  # never the process's: the thread may have been elsewhere
        if len(self._namespaces) > 4096:
            self._namespaces.clear()
            self._cgroups.clear()
        self._namespaces[tid] = netns
        self._cgroups[pid] = _cgroup(pid)
        return netns

    def full(self) -> bool:
        """--count's self-connects are all reported."""
        return self.count is not None and self.reported >= self.count

    def feed(self, line: str) -> None:
        # Most lines are aborts of ordinary connections: drop them before any parsing.
        at = line.find("skaddr=0x")
        if at < 0:
            lost = LOST.search(line)
            if lost:
                self.lost += int(lost.group(1))
            return
        self.events += 1
        sk = line[at + 9 : line.find(" ", at)]
        episode = self.following.get(sk)
        if " tcp_destroy_sock: " in line[:at]:
            if episode is not None and episode.aborted is not None:
                # Its source port is still the self-connect's when it was not dialled again;
                # a retry (refused, then closed) would have taken another.
                sport = DESTROYED_SPORT.search(line, at)
                again = sport is not None and int(sport[1]) != episode.port
                self._decide(episode, "ended" if episode.reset_sent else "caught" if again else "reset")
            return
        if episode is None and SELF_OPEN not in line:
            return
        match = LINE.match(line)
        if match is None or int(match["protocol"]) != socket.IPPROTO_TCP:
            return
        old, new = int(match["old"]), int(match["new"])
        if episode is not None and not episode.pid_sure and _in_task(match["flags"]):
            # Met in a softirq that ran on behalf of another task; this transition ran in
            # the socket owner's own call (its disconnect, or its close).
            self._attribute(episode, match)
        if old == SYN_SENT and new == SYN_RECV:
            if episode is not None:
                # The same socket met itself again, with no destroy in between: its last
                # self-connect was reset in place and dialled again.
                self._decide(episode, "caught" if episode.aborted is not None else "closed")
            self._begin(match)
        elif episode is None:
            return
        elif old == ESTABLISHED and new == CLOSE:
            episode.aborted = float(match["ts"])
            if episode.reset_sent:
                self._decide(episode, "ended")
        elif new == CLOSING:
            if episode.reset_due is not None:
                # Its program closed it before --reset's turn: end what the close leaves, the
                # TIME_WAIT that would keep the server off its port for a minute.
                self._reset(episode)
            self._decide(episode, "closed")

    def _begin(self, match: re.Match[str]) -> None:
        family, port = int(match["family"]), int(match["sport"])
        if match["sport"] != match["dport"] or (family == socket.AF_INET and match["saddr"] != match["daddr"]):
            return  # a true simultaneous open between two sockets: not a self-connect
        if self.count is not None and self.reported + len(self.following) >= self.count:
            return  # --count's self-connects are all followed already: report exactly that many
        episode = Episode(
            sk=match["sk"],
            seen=float(match["ts"]),
            pid=0,
            tid=0,
            comm="",
            pid_sure=False,
            family=family,
            address=_address(family, int(match["saddr"])),
            port=port,
        )
        self._attribute(episode, match)
        if family == socket.AF_INET6 and not self._v6_self(episode):
            return
        pid = episode.pid
        if any(low <= port <= high for low, high in self.reset_ports):
            try:
                # Held at once: a one-shot client may exit within a millisecond of its connect.
                episode.netns_fd = os.open(_ns_path(pid, episode.tid), os.O_RDONLY)
            except OSError:
                # Its thread is gone: a socket its process still holds names its own namespace;
                # what its close left cannot be found.
                pass
            episode.reset_due = episode.seen + GRACE
        self.following[episode.sk] = episode

    def _v6_self(self, episode: Episode) -> bool:
        """Whether an IPv6 simultaneous open is a socket meeting itself, asked of sock_diag in the thread's namespace.

        The event's IPv6 addresses are not printed in the mode that gives the socket's
        identity: two sockets [a]:P and [b]:P dialling each other look like one socket
        meeting itself. Rare (a simultaneous open on IPv6), so worth one sock_diag dump.
        What cannot be looked at (a thread gone, its sockets closed) is reported as a
        self-connect, address unknown.
        """
        try:
            pairs = _sockdiag.port_pairs(_ns_path(episode.pid, episode.tid), socket.AF_INET6, episode.port, ALL_STATES)
        except OSError:
            return True
        selves = {f.address for f in pairs if f.address == f.peer}
        if len(selves) == 1:
            episode.address = next(iter(selves))
        return bool(selves) or not pairs

    def _attribute(self, episode: Episode, match: re.Match[str]) -> None:
        """Name the task the kernel ran *match*'s transition in as the socket's program."""
        tid = int(match["tid"])
        episode.tid = tid
        episode.pid = int(match["tgid"]) if match["tgid"].isdigit() else _tgid(tid)
        comm = match["comm"].strip()
        if comm in ("<...>", ""):
            comm = (_read(f"/proc/{tid}/comm") or "?").strip()
        episode.comm = comm
        episode.pid_sure = _in_task(match["flags"])
        episode.netns = self._netns(episode.pid, tid)
        episode.cgroup = self._cgroups.get(episode.pid)

    def tick(self, now: float) -> None:
        """Decide what time decides: --reset's turn, and sockets that stayed as they were for --settle."""
        for episode in list(self.following.values()):
            if episode.reset_due is not None and now >= episode.reset_due and episode.aborted is None:
                self._reset(episode)
            elif episode.aborted is not None and now - episode.aborted >= self.settle:
                self._decide(episode, "caught")  # reset in place, still alive: dialled again
            elif episode.aborted is None and now - episode.seen >= self.settle:
                self._decide(episode, "open")

    def _reset(self, episode: Episode) -> None:
        episode.reset_due = None
        family = socket.AF_INET if episode.family == socket.AF_INET else socket.AF_INET6
        held: list[_sockdiag.Held] = []
        try:
            if episode.pid_sure:
                try:
                    held = _sockdiag.held_by(episode.pid, family, episode.port)
                except OSError:
                    pass  # gone: what its close left is in the namespace held when the event was read
            mine = [h for h in held if h.address == h.peer and episode.address in (None, h.address)]
            if len(mine) > 1:
                # Two namespaces, or two addresses: which one met itself, the kernel's event does not say.
                episode.detail["reset"] = (
                    f"not done: could not confirm the socket ({len(mine)} of its sockets are connected "
                    f"from port {episode.port} to themselves)"
                )
                return
            self._reset_in(episode, family, mine[0] if mine else None)
        except OSError as exc:
            episode.detail["reset"] = f"failed: {exc.strerror or exc}"
        finally:
            for one in held:
                os.close(one.netns_fd)

    def _reset_in(self, episode: Episode, family: int, held: Optional[_sockdiag.Held]) -> None:
        """End the socket *held* identifies, in its own namespace; without one, only a socket no program holds."""
        if held is not None:
            netns = f"/proc/self/fd/{held.netns_fd}"
        elif episode.netns_fd is not None:
            # TIME_WAIT and orphans have no inode: nothing a program could still be using.
            netns = f"/proc/self/fd/{episode.netns_fd}"
        else:
            episode.detail["reset"] = "not done: the process was gone before its namespace could be held"
            return
        low, high = _sockdiag.ephemeral_range(netns)
        if not low <= episode.port <= high:
            # The kernel never picks a port outside the range: this socket was bound on purpose.
            episode.detail["reset"] = f"not done: port outside that namespace's ephemeral range {low}-{high}"
            return
        candidates = _sockdiag.self_connected(netns, family, episode.port, RESET_STATES)
        candidates = [f for f in candidates if episode.address in (None, f.address)]
        found = [f for f in candidates if f.inode == (held.inode if held is not None else 0)]
        if not found:
            if candidates:
                episode.detail["reset"] = "not done: could not confirm the socket"
            else:
                episode.detail["reset"] = "not done: gone already"
            return
        episode.address = found[0].address
        episode.reset_sent = True
        failed = [code for code in (_sockdiag.destroy(netns, family, f) for f in found) if code]
        if failed:
            episode.reset_sent = False
            episode.detail["reset"] = f"failed: {os.strerror(failed[0])}"
        else:
            episode.detail["reset"] = "done: the port is free"

    def _decide(self, episode: Episode, outcome: str) -> None:
        self.following.pop(episode.sk, None)
        if episode.netns_fd is not None:
            os.close(episode.netns_fd)
            episode.netns_fd = None
        episode.outcome = outcome
        self.reported += 1
        self.summary[(episode.comm, episode.port, outcome)] += 1
        self._print(episode)

    def finish(self) -> None:
        """Report what is still followed (cut short before --settle: unknown), then the summary."""
        for episode in list(self.following.values()):
            self._decide(episode, "unknown at exit")
        if self.as_json:
            rows = [{"comm": c, "port": p, "outcome": o, "count": n} for (c, p, o), n in sorted(self.summary.items())]
            totals = {"self_connects": self.reported, "events": self.events, "lost_events": self.lost}
            print(json.dumps({"summary": rows, **totals}), file=self.out)
        else:
            print(f"{self.reported} self-connect(s) seen; {self.events} events read, {self.lost} lost", file=self.out)
            for (comm, port, outcome), n in sorted(self.summary.items()):
                print(f"  {n:6}  {comm:16} port {port:<5}  {outcome}", file=self.out)
        self.out.flush()

    def _print(self, episode: Episode) -> None:
        # The event's own (monotonic) time on the wall clock: seconds and milliseconds of one instant.
        wall = episode.seen + self.clock_offset
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int((wall % 1) * 1000):03d}Z"
        family = "ipv4" if episode.family == socket.AF_INET else "ipv6"
        if self.as_json:
            record = {
                "time": when,
                "pid": episode.pid,
                "tid": episode.tid,
                "comm": episode.comm,
                "pid_sure": episode.pid_sure,
                "netns": episode.netns,
                "cgroup": episode.cgroup,
                "family": family,
                "address": episode.address,
                "port": episode.port,
                "outcome": episode.outcome,
                **episode.detail,
            }
            self.out.write(json.dumps(record) + "\n")
        else:
            where = episode.address if episode.family == socket.AF_INET else f"[{episode.address or '?'}]"
            pid = f"pid {episode.pid}" + ("" if episode.pid_sure else "?")
            extra = "".join(f"  {key}: {value}" for key, value in episode.detail.items())
            print(
                f"{when}  {pid} ({episode.comm})  netns {episode.netns}  {where}:{episode.port}"
                f"  {episode.outcome}{extra}",
                file=self.out,
            )
        self.out.flush()


class _Stop:
    """Ctrl-C, SIGTERM and SIGHUP ask the loop to stop between two reads, never in the middle of a line."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        self.asked += 1


class _Reader:
    """Reads the instance's trace pipe into the watcher, whole lines only."""

    def __init__(self, pipe: int, watcher: Watcher) -> None:
        self.pipe = pipe
        self.watcher = watcher
        self.pending = b""

    def read(self, stop: _Stop, rounds: int = 64) -> bool:
        """Feed what the buffer holds, up to *rounds* reads; True if it was drained empty."""
        # Never for ever: a host that makes events as fast as they are read must still
        # let --duration, --count and Ctrl-C in.
        for _ in range(rounds):
            try:
                chunk = os.read(self.pipe, 1 << 16)
            except BlockingIOError:
                return True
            if not chunk:
                return True
            lines = (self.pending + chunk).split(b"\n")
            self.pending = lines.pop()
            for line in lines:
                self.watcher.feed(line.decode(errors="replace"))
            if stop.asked > 1:
                return True
        return False


# At exit: how long the events still buffered may take to read, and how long the
# self-connects still followed get to settle (at most --settle) before the summary.
DRAIN = 0.5


def watch(
    duration: Optional[float], count: Optional[int], as_json: bool, settle: float, reset_ports: list[tuple[int, int]]
) -> int:
    """Watch until stopped; print each self-connect with its outcome, then a summary."""
    if not sys.platform.startswith("linux"):
        raise CannotRun("needs Linux")
    if os.geteuid() != 0:
        raise CannotRun("needs root: it reads the kernel's tracing (tracefs), which only root may")
    root = _tracefs.find_tracefs()
    swept = _tracefs.sweep(root)
    instance = _tracefs.Instance(root, FILTER, DESTROY_FILTER)
    watcher = Watcher(sys.stdout, as_json, settle, reset_ports, count)
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    print(
        f"selfguard watch: watching every network namespace through {instance.path}"
        + (f" (removed {len(swept)} left by killed watchers)" if swept else "")
        + "; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    deadline = None if duration is None else time.monotonic() + duration
    assert instance.pipe is not None
    reader = _Reader(instance.pipe, watcher)
    try:
        while not stop.asked and not watcher.full():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = IDLE if not watcher.following else min(GRACE, settle / 4)
            if deadline is not None:
                wait = min(wait, deadline - now)
            # The pipe's poll does not always wake at the first event: read after every
            # wait, readable or not (a non-blocking read of an empty buffer costs ~1 us).
            select.select([instance.pipe], [], [], max(wait, 0.0))
            reader.read(stop)
            watcher.tick(time.monotonic())
        # What the kernel buffered before the stop was asked for is part of the watch:
        # read it all (bounded), then let what is still followed settle, a second
        # Ctrl-C cutting that short.
        ending = time.monotonic()
        while not reader.read(stop) and time.monotonic() - ending < DRAIN:
            pass
        watcher.tick(time.monotonic())
        while watcher.following and stop.asked < 2 and time.monotonic() - ending < settle + DRAIN:
            select.select([instance.pipe], [], [], min(GRACE, settle / 4))
            reader.read(stop)
            watcher.tick(time.monotonic())
    finally:
        instance.close()
    watcher.finish()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return EXIT_OK


def port_list(text: str) -> list[tuple[int, int]]:
    """argparse type for --reset: ports and ranges, "6379,8000-8099"."""
    try:
        ranges = parse_port_list(text)
    except ValueError:
        ranges = []
    if not ranges or any(not 1 <= low <= high <= 65535 for low, high in ranges):
        raise argparse.ArgumentTypeError(f"invalid port list {text!r}: expected ports or ranges, e.g. 6379,8000-8099")
    return ranges


def register(commands: Commands) -> None:
    """Add the `watch` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "watch",
        help="report every TCP self-connect on this host (every program, every namespace) and what became of it",
        description=DESCRIPTION,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line, then one with the summary")
    parser.add_argument("--duration", type=positive_seconds, metavar="S", help="stop after S seconds")
    parser.add_argument("--count", type=positive_count, metavar="N", help="stop after N self-connects reported")
    parser.add_argument(
        "--settle",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="seconds a self-connect is followed before it is reported as still open, or as caught (default 1)",
    )
    parser.add_argument(
        "--reset",
        type=port_list,
        default=[],
        metavar="PORTS",
        help=(
            "end each self-connected socket on these ports (6379,8000-8099) that no guard caught within "
            f"{GRACE * 1000:g} ms, in its own namespace (SOCK_DESTROY, as `ss -K`), or the TIME_WAIT its "
            "program's close left: the program reads ECONNABORTED if it still had it, and the server can bind "
            "the port at once. Never a port outside the ephemeral range (bound on purpose), never a socket it "
            "cannot confirm (says why)"
        ),
    )

    def handle(args: argparse.Namespace) -> int:
        return watch(args.duration, args.count, args.json, args.settle, args.reset)

    parser.set_defaults(func=handle)
