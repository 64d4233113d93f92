"""`selfguard doctor`: find the server ports of this host that a reconnecting client could connect itself to."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import struct
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ._cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun
from ._kernel import RANGE_FILE, RESERVED_FILE, read_reserved_ports
from ._ports import ephemeral_range

if TYPE_CHECKING:
    from ._cli import Commands

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h, as /proc/net/tcp prints it
SYSCTL = "net.ipv4.ip_local_reserved_ports"
SYSCTL_FILE = "/etc/sysctl.d/90-selfguard.conf"

RISK = (
    "while it is down, a client reconnecting to it can connect to itself, and then hold the port "
    "in TIME_WAIT so the service cannot bind it for ~60 s when it restarts"
)


@dataclass
class Port:
    """One port the doctor looked at, and its verdict."""

    port: int
    listening: bool = False
    requested: bool = False  # given with --port
    addresses: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    in_range: bool = False
    reserved: bool = False
    at_risk: bool = False
    reason: str = ""


def port_number(text: str) -> int:
    """argparse type for a TCP port: a whole number from 1 to 65535."""
    # int() would also take " 42", "+42" and "4_2".
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a whole number from 1 to 65535")
    return int(text)


def format_port_list(ranges: Iterable[tuple[int, int]]) -> str:
    """Merge overlapping and adjacent ranges and write them as the kernel does ("8080,9000-9010")."""
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in merged)


def _address(hex_address: str) -> str:
    # /proc/net/tcp prints each 32-bit word of the address as a host-order
    # integer, so packing the words natively gives the network-order bytes.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_sockets(tables: Sequence[str] = TCP_TABLES) -> list[tuple[int, str, int]]:
    """Return (port, address, inode) for each listening TCP socket of this network namespace."""
    found = []
    for path in tables:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:  # tcp6 is missing when IPv6 is disabled
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            found.append((int(hex_port, 16), _address(hex_address), int(fields[9])))
    return found


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, list[str]]:
    """Map socket inodes to the processes holding them ("name[pid]"), as far as this user may look."""
    owners: dict[int, list[str]] = {}
    if not inodes:
        return owners
    for pid in filter(str.isdigit, os.listdir(proc)):
        held = set()
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:  # another user's process, or one that just exited
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile (listdir's own fd, for one)
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
        held &= inodes
        if not held:
            continue
        try:
            with open(f"{proc}/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        for inode in held:
            owners.setdefault(inode, []).append(f"{name}[{pid}]")
    return owners


def examine(requested: Sequence[int]) -> dict[str, Any]:
    """Look at the range, the reserved ports and every listening or requested port; return the findings."""
    low, high = ephemeral_range()
    reserved = read_reserved_ports()

    ports: dict[int, Port] = {}
    inodes: dict[int, set[int]] = {}
    for number, address, inode in listening_sockets():
        entry = ports.setdefault(number, Port(number, listening=True))
        if address not in entry.addresses:
            entry.addresses.append(address)
        inodes.setdefault(number, set()).add(inode)
    for number in requested:
        ports.setdefault(number, Port(number)).requested = True

    for entry in ports.values():
        entry.in_range = low <= entry.port <= high
        entry.reserved = any(a <= entry.port <= b for a, b in reserved)
        entry.at_risk = entry.in_range and not entry.reserved
        if not entry.in_range:
            entry.reason = f"outside the ephemeral range {low}-{high}: the kernel never picks it as a source port"
        elif entry.reserved:
            entry.reason = f"reserved in {SYSCTL}: the kernel never picks it as a source port"
        else:
            entry.reason = RISK

    # Only worth the walk through /proc for the ports that need naming.
    owners = socket_owners(set().union(*(inodes[p.port] for p in ports.values() if p.at_risk and p.listening)))
    for number, held in inodes.items():
        ports[number].processes = sorted({owner for inode in held for owner in owners.get(inode, [])})

    at_risk = sorted(p.port for p in ports.values() if p.at_risk)
    setting = format_port_list(reserved + [(p, p) for p in at_risk]) if at_risk else None
    return {
        "ephemeral_range": [low, high],
        "reserved": format_port_list(reserved),
        "ports": [asdict(ports[number]) for number in sorted(ports)],
        "at_risk": at_risk,
        "reserved_after": setting,
        "sysctl_command": f"sysctl -w {SYSCTL}={setting}" if setting else None,
        "sysctl_conf_line": f"{SYSCTL} = {setting}" if setting else None,
        "sysctl_conf_file": SYSCTL_FILE,
    }


def _describe(entry: dict[str, Any]) -> str:
    if entry["listening"]:
        where = "listening on " + ", ".join(entry["addresses"])
        if entry["processes"]:
            where += " by " + ", ".join(entry["processes"][:3]) + (" ..." if len(entry["processes"]) > 3 else "")
    else:
        where = "not listening now"
    return f"port {entry['port']} ({where}{', --port' if entry['requested'] else ''})"


def render(report: dict[str, Any]) -> str:
    """The findings as text for a person."""
    low, high = report["ephemeral_range"]
    lines = [
        f"Ephemeral ports: {low}-{high} ({RANGE_FILE})",
        f"Reserved ports:  {report['reserved'] or '(none)'} ({RESERVED_FILE})",
        "",
    ]
    risky = [p for p in report["ports"] if p["at_risk"]]
    # Listening ports outside the range are the usual, safe case; only ports
    # the user asked about are worth a line when they are safe.
    safe = [p for p in report["ports"] if not p["at_risk"] and (p["requested"] or p["in_range"])]
    quiet = sum(1 for p in report["ports"] if p["listening"] and not p["requested"] and not p["in_range"])
    if risky:
        lines.append(f"At risk ({len(risky)}):")
        lines += [f"  {_describe(p)}: {p['reason']}" for p in risky]
    else:
        lines.append("No port at risk.")
    if safe or quiet:
        lines.append("Safe:")
        lines += [f"  {_describe(p)}: {p['reason']}" for p in safe]
    if quiet:
        lines.append(f"  ({quiet} other listening port(s) lie outside the ephemeral range: safe)")
    if risky:
        lines += [
            "",
            "Reserve the ports at risk, so the kernel never hands them out as source ports (root; takes effect",
            "at once; servers can still bind reserved ports):",
            f"  {report['sysctl_command']}",
            f"To keep it across reboots, put this line in {report['sysctl_conf_file']}:",
            f"  {report['sysctl_conf_line']}",
            "Reserve only ports a service uses every time (a port from bind(0) changes at each start).",
            "The setting is per network namespace: containers need it in theirs.",
        ]
    return "\n".join(lines)


DESCRIPTION = f"""\
List this host's listening TCP ports (and the ports given with --port) that lie
inside the ephemeral port range and are not reserved, and print the sysctl
setting that reserves them.

exit status:
  {EXIT_OK}  nothing at risk
  {EXIT_FOUND}  some port at risk
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: not Linux, /proc unreadable"""


def register(commands: Commands) -> None:
    """Add the `doctor` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "doctor",
        help="find the server ports of this host that clients could connect themselves to",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--port",
        type=port_number,
        action="append",
        default=[],
        metavar="P",
        help="also check port P, for a service that is down right now (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; its exit status is in DESCRIPTION."""
    try:
        report = examine(args.port)
    except (OSError, ValueError) as exc:
        # A /proc this process may not read.
        raise CannotRun(f"cannot examine this host: {exc}") from exc
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_FOUND if report["at_risk"] else EXIT_OK
