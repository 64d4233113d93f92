"""`selfguard doctor`: find the server ports of this host that a reconnecting client could connect itself to."""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ._cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun, count
from ._listeners import listening_sockets, socket_owners
from ._ports import RANGE_FILE, connect_tries_first, covers, ephemeral_range, format_port_list, parity, port_number
from ._recipes import container_recipes, render_recipes
from ._reserve import RESERVED_FILE, SYSCTL, carry_out, plan, read_reserved, render_apply

if TYPE_CHECKING:
    from ._cli import Commands

SYSCTL_FILE = "/etc/sysctl.d/90-selfguard.conf"

RISK = (
    "While a port at risk is down, a client reconnecting to it can be given that same port as its source port "
    "and connect to itself; when the client closes, its TIME_WAIT keeps the service from binding the port "
    "for ~60 s."
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
    risk: Optional[str] = None  # "high" or "low" when at risk
    reason: str = ""


def _verdict(entry: Port, low: int, high: int) -> None:
    entry.in_range = low <= entry.port <= high
    entry.at_risk = entry.in_range and not entry.reserved
    if not entry.in_range:
        entry.reason = f"outside the ephemeral range {low}-{high}: the kernel never picks it as a source port"
    elif entry.reserved:
        entry.reason = f"reserved in {SYSCTL}: the kernel never picks it as a source port"
    elif connect_tries_first(entry.port, low):
        entry.risk = "high"
        entry.reason = f"{parity(low)} like {low}, the range's low end: connect() tries these source ports first"
    else:
        entry.risk = "low"
        entry.reason = (
            f"{parity(entry.port)}, unlike {low}: a plain connect() picks these only when every {parity(low)} port "
            "is taken, but a client that binds port 0 before connecting prefers them"
        )


def examine(requested: Sequence[int]) -> dict[str, Any]:
    """Look at the range, the reserved ports and every listening or requested port; return the findings."""
    low, high = ephemeral_range()
    reserved = read_reserved()

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
        entry.reserved = covers(reserved, entry.port)
        _verdict(entry, low, high)

    # Only worth the walk through /proc for the ports that need naming.
    owners = socket_owners(set().union(*(inodes[p.port] for p in ports.values() if p.at_risk and p.listening)))
    for number, held in inodes.items():
        ports[number].processes = sorted({owner for inode in held for owner in owners.get(inode, [])})

    # High risk first: those are the ports a reconnect loop actually meets.
    at_risk = sorted((p for p in ports.values() if p.at_risk), key=lambda p: (p.risk != "high", p.port))
    setting = format_port_list(reserved + [(p.port, p.port) for p in at_risk]) if at_risk else None
    return {
        "ephemeral_range": [low, high],
        "connect_parity": parity(low),
        "reserved": format_port_list(reserved),
        "ports": [asdict(ports[number]) for number in sorted(ports)],
        "at_risk": [p.port for p in at_risk],
        "risk": RISK if at_risk else None,
        "reserved_after": setting,
        "sysctl_command": f"sysctl -w {SYSCTL}={setting}" if setting else None,
        "sysctl_conf_line": f"{SYSCTL} = {setting}" if setting else None,
        "sysctl_conf_file": SYSCTL_FILE,
        "containers": container_recipes(setting) if setting else None,
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
    by_port = {p["port"]: p for p in report["ports"]}
    risky = [by_port[port] for port in report["at_risk"]]
    # Listening ports outside the range are the usual, safe case; only ports
    # the user asked about are worth a line when they are safe.
    safe = [p for p in report["ports"] if not p["at_risk"] and (p["requested"] or p["in_range"])]
    quiet = sum(1 for p in report["ports"] if p["listening"] and not p["requested"] and not p["in_range"])
    if risky:
        high_risk = sum(1 for p in risky if p["risk"] == "high")
        lines.append(f"At risk ({len(risky)}: {high_risk} high, {len(risky) - high_risk} low):")
        lines += [f"  {_describe(p)}: {p['risk']}: {p['reason']}" for p in risky]
        lines += textwrap.wrap(report["risk"], 100)
    else:
        lines.append("No port at risk.")
    if safe or quiet:
        lines.append("Safe:")
        lines += [f"  {_describe(p)}: {p['reason']}" for p in safe]
    if quiet:
        lines.append(f"  ({count(quiet)} other listening port(s) lie outside the ephemeral range: safe)")
    if report.get("processes"):
        from ._process import describe

        lines += [describe(found) for found in report["processes"]]
    if "apply" in report:
        lines += ["", *render_apply(report["apply"], SYSCTL_FILE)]
    elif risky:
        lines += [
            "",
            "Reserve the ports at risk, so the kernel never hands them out as source ports (root; takes effect",
            "at once; servers can still bind reserved ports), with --apply or by hand:",
            f"  {report['sysctl_command']}",
            f"To keep it across reboots (--persist FILE), put this line in {report['sysctl_conf_file']}:",
            f"  {report['sysctl_conf_line']}",
        ]
    if risky:
        lines += [
            "Reserve only ports a service uses every time (a port from bind(0) changes at each start).",
            "",
            *render_recipes(report["containers"]),
        ]
    return "\n".join(lines)


DESCRIPTION = f"""\
List this host's listening TCP ports (and the ports given with --port) that lie
inside the ephemeral port range and are not reserved, rank each one's risk, and
print the sysctl setting that reserves them, with recipes for containers.

A port of the same parity as the range's low end is at high risk: connect()
tries those source ports first (measured with 32768-60999: about 7 self-connects
per 100,000 dials to such a closed port). The other parity is at low risk from
plain connect() clients, which pick those only when every port of the first
parity is taken (0 in 300,000 dials measured); but a client that binds to port 0
before connecting (source_address=(host, 0), local_addr=) prefers that parity
and meets it about as often. Reserve both.

--apply adds the ports at risk to {SYSCTL} in this
network namespace (root only), merged with the ports reserved already: it never
removes one, and writes nothing when nothing is at risk. --persist FILE also
writes the setting to a sysctl.d file (atomically, keeping its other lines) when
a port checked in the range is not reserved there yet. --dry-run shows what
--apply and --persist would change, before and after, and writes nothing.

exit status:
  {EXIT_OK}  nothing at risk (with --apply: every port at risk is reserved now)
  {EXIT_FOUND}  some port at risk (with --dry-run: still at risk)
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: not Linux, /proc unreadable, or no right to write (--apply
     without root, an unwritable --persist FILE), in which case nothing is written"""


def register(commands: Commands) -> None:
    """Add the `doctor` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "doctor",
        help="find the server ports of this host that clients could connect themselves to; reserve them (--apply)",
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
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help=(
            "also tell whether process PID is guarded, and by which guard (the Python guard, the native guard of "
            "selfguard run --native), or that there is no such process (repeatable)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument("--apply", action="store_true", help=f"reserve the ports at risk in {SYSCTL} (root)")
    parser.add_argument(
        "--persist",
        metavar="FILE",
        help=f"with --apply, also write the setting to the sysctl.d file FILE (e.g. {SYSCTL_FILE})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what --apply (and --persist) would change; write nothing"
    )

    def handle(args: argparse.Namespace) -> int:
        if args.persist is not None and not (args.apply or args.dry_run):
            parser.error("--persist FILE goes with --apply (or --dry-run, to see what it would write)")
        return run(args)

    parser.set_defaults(func=handle)


def run(args: argparse.Namespace) -> int:
    """Run the command; its exit status is in DESCRIPTION."""
    try:
        report = examine(args.port)
        if args.pid:
            from . import _process

            report["processes"] = [_process.examine(pid) for pid in args.pid]
            # Kept for scripts written before "processes": whether the native guard is active.
            report["native_guard"] = {str(found["pid"]): bool(found["native"]) for found in report["processes"]}
        if args.apply or args.dry_run:
            checked = [p["port"] for p in report["ports"] if p["in_range"]]
            changes = plan(report["at_risk"], checked, args.persist)
    except (OSError, ValueError) as exc:
        # A /proc this process may not read.
        raise CannotRun(f"cannot examine this host: {exc}") from exc
    applied = args.apply and not args.dry_run
    if args.apply or args.dry_run:
        if applied:
            try:
                carry_out(changes)
            except OSError as exc:
                # carry_out words the failures it expects; this is any other.
                raise CannotRun(f"--apply failed: {exc}") from exc
        report["apply"] = {
            "dry_run": not applied,
            "sysctl": asdict(changes.sysctl),
            "persist": asdict(changes.persist) if changes.persist else None,
        }
    print(json.dumps(report, indent=2) if args.json else render(report))
    # carry_out() checked that the kernel now reserves every port that was at risk.
    return EXIT_FOUND if report["at_risk"] and not applied else EXIT_OK
