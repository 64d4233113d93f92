"""`selfguard doctor`: find the server ports of this host that a reconnecting client could connect itself to."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun, count, nonnegative_seconds, pid_number
from .listeners import listening_sockets, process_age, socket_owners
from .ports import RANGE_FILE, connect_tries_first, covers, ephemeral_range, format_port_list, parity, port_list
from .recipes import container_recipes, render_recipes
from .reserve import (
    RESERVED_FILE,
    SYSCTL,
    Ranges,
    boot_override,
    carry_out,
    only_ours,
    plan,
    read_reserved,
    recorded_ports,
    render_apply,
    rights_problem,
)

if TYPE_CHECKING:
    from .cli import Commands

SYSCTL_FILE = "/etc/sysctl.d/90-selfguard.conf"
# A listener whose process is younger is transient (a test server, a tool):
# not proposed for reservation unless named. Ten minutes outlasts a test run
# and a tool's listener; a service restarted within it is listed, with how to
# name it. An age is no proof a port is fixed: --only --port is exact.
DEFAULT_MIN_AGE = 600

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
    age: Optional[float] = None  # seconds since its oldest process started (listening and at risk; None: unknown)
    skipped: Optional[str] = None  # why the doctor does not propose to reserve it, although at risk


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


def _ages(processes: list[tuple[str, int]]) -> Optional[float]:
    # The oldest holder counts: a pre-fork server's workers come and go, its
    # master (which opened the socket) stays.
    ages = [age for age in (process_age(pid) for _, pid in processes) if age is not None]
    return max(ages) if ages else None


def examine(
    requested: Sequence[int],
    *,
    only: bool = False,
    exclude: Sequence[int] = (),
    min_age: float = 0.0,
    record: Optional[Ranges] = None,
) -> dict[str, Any]:
    """Look at the range, the reserved ports and every listening or requested port; return the findings.

    The ports at risk that the doctor proposes to reserve are those not
    excluded, named with --port when *only*, and -- a listener not named --
    held by a process older than *min_age* seconds. *record*: the ports a
    --persist file records as the doctor's own.
    """
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
    hidden = []
    for number, held in inodes.items():
        found = sorted({owner for inode in held for owner in owners.get(inode, [])})
        ports[number].processes = [f"{name}[{pid}]" for name, pid in found]
        if ports[number].at_risk:
            ports[number].age = _ages(found)
            if not found and os.geteuid() != 0:
                hidden.append(number)

    for entry in ports.values():
        if not entry.at_risk:
            continue
        if entry.port in exclude:
            entry.skipped = "excluded (--exclude)"
        elif only and not entry.requested:
            entry.skipped = "not named with --port (--only)"
        elif entry.listening and not entry.requested and entry.age is not None and entry.age < min_age:
            entry.skipped = (
                f"transient: its process started {entry.age:.0f} s ago, less than --min-age {min_age:g} s "
                "(name it with --port to reserve it)"
            )

    # High risk first: those are the ports a reconnect loop actually meets.
    at_risk = sorted((p for p in ports.values() if p.at_risk), key=lambda p: (p.risk != "high", p.port))
    proposed = [p for p in at_risk if not p.skipped]
    setting = format_port_list(reserved + [(p.port, p.port) for p in proposed]) if proposed else None
    return {
        "ephemeral_range": [low, high],
        "connect_parity": parity(low),
        "reserved": format_port_list(reserved),
        "ports": [asdict(ports[number]) for number in sorted(ports)],
        "at_risk": [p.port for p in at_risk],
        "to_reserve": [p.port for p in proposed],
        "not_proposed": [p.port for p in at_risk if p.skipped],
        "owners_hidden": hidden,
        "min_age": min_age,
        "risk": RISK if at_risk else None,
        "reserved_after": setting,
        "sysctl_command": f"sysctl -w {SYSCTL}={setting}" if setting else None,
        "sysctl_conf_line": f"{SYSCTL} = {setting}" if setting else None,
        "sysctl_conf_file": SYSCTL_FILE,
        "containers": container_recipes(setting) if setting else None,
        **_stale(reserved, {p.port for p in ports.values() if p.listening or p.requested}, record),
    }


def _stale(reserved: Ranges, wanted: set[int], record: Optional[Ranges]) -> dict[str, Any]:
    """The reservations where nothing listens now (nor named with --port), and which of them the doctor added."""
    # A live entry reaching past the record (the kernel merges an operator's range over it) keeps its ports.
    ours = set() if record is None else {port for port, _ in only_ours(record, reserved)}
    stale = [
        {"ports": format_port_list([(low, high)]), "recorded": all(port in ours for port in range(low, high + 1))}
        for low, high in reserved
        if not any(low <= port <= high for port in wanted)
    ]
    return {
        "stale": stale,
        "record": format_port_list(record) if record is not None else None,
        # Only ports recorded as the doctor's come out: an operator's own reservation is theirs to remove.
        "prunable": sorted(port for port in ours if port not in wanted),
    }


def _describe(entry: dict[str, Any]) -> str:
    if entry["listening"]:
        where = "listening on " + ", ".join(entry["addresses"])
        if entry["processes"]:
            where += " by " + ", ".join(entry["processes"][:3]) + (" ..." if len(entry["processes"]) > 3 else "")
    else:
        where = "not listening now"
    return f"port {entry['port']} ({where}{', --port' if entry['requested'] else ''})"


def render(report: dict[str, Any], stale: bool = False) -> str:
    """The findings as text for a person; *stale*: also list the reservations where nothing listens."""
    low, high = report["ephemeral_range"]
    lines = [
        f"Ephemeral ports: {low}-{high} ({RANGE_FILE})",
        f"Reserved ports:  {report['reserved'] or '(none)'} ({RESERVED_FILE})",
        "",
    ]
    by_port = {p["port"]: p for p in report["ports"]}
    risky = [by_port[port] for port in report["to_reserve"]]
    others = [by_port[port] for port in report["not_proposed"]]
    # Listening ports outside the range are the usual, safe case; only ports
    # the user asked about are worth a line when they are safe.
    safe = [p for p in report["ports"] if not p["at_risk"] and (p["requested"] or p["in_range"])]
    quiet = sum(1 for p in report["ports"] if p["listening"] and not p["requested"] and not p["in_range"])
    if risky:
        high_risk = sum(1 for p in risky if p["risk"] == "high")
        lines.append(f"At risk ({len(risky)}: {high_risk} high, {len(risky) - high_risk} low):")
        lines += [f"  {_describe(p)}: {p['risk']}: {p['reason']}" for p in risky]
    else:
        lines.append("No port at risk." if not others else "No port at risk that the doctor proposes to reserve.")
    if others:
        lines.append(f"At risk, not proposed ({len(others)}):")
        lines += [f"  {_describe(p)}: {p['risk']}: {p['skipped']}" for p in others]
    if report["risk"]:
        lines += textwrap.wrap(report["risk"], 100)
    if report["owners_hidden"]:
        lines += textwrap.wrap(
            f"Process names (and ages) hidden for port(s) {', '.join(map(str, report['owners_hidden']))}: only "
            "root may read another user's /proc/PID/fd; run the doctor as root to see them.",
            100,
        )
    if safe or quiet:
        lines.append("Safe:")
        lines += [f"  {_describe(p)}: {p['reason']}" for p in safe]
    if quiet:
        lines.append(f"  ({count(quiet)} other listening port(s) lie outside the ephemeral range: safe)")
    lines += _render_stale(report, stale)
    if report.get("processes"):
        from .process import describe

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
            "Reserve only ports a service uses every time (a port from bind(0) changes at each start):",
            "--only --port P,... reserves exactly the ports named, --exclude P,... leaves ports out.",
            "",
            *render_recipes(report["containers"]),
        ]
    return "\n".join(lines)


def _render_stale(report: dict[str, Any], stale: bool) -> list[str]:
    prunable = report["prunable"]
    if not stale:
        if not prunable:
            return []
        return [f"{count(len(prunable))} port(s) the doctor reserved have no listener now (see --stale)."]
    if not report["reserved"]:
        return ["No port is reserved."]
    if not report["stale"]:
        return ["Every reservation has a listener (or was named with --port)."]
    lines = ["Reserved, but nothing listens there now (nor named with --port):"]
    for entry in report["stale"]:
        if entry["recorded"]:
            lines.append(f"  {entry['ports']}: added by the doctor (recorded in --persist FILE): --prune removes it")
        else:
            lines.append(f"  {entry['ports']}: not recorded as the doctor's: yours to remove, if no service needs it")
    if report["record"] is None:
        lines.append("  (give --persist FILE to tell the doctor's own reservations, recorded there, from others)")
    return lines


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

Which ports it proposes to reserve: every listener at risk whose process has
run for --min-age seconds (default {count(DEFAULT_MIN_AGE)}; younger ones are transient: test
servers, tools) and every --port at risk; --only keeps to the ports named with
--port; --exclude P leaves P out. The others at risk are listed, not proposed.

--apply adds the ports proposed to {SYSCTL} in this
network namespace (root only), merged with the ports reserved already, and
writes nothing when none is proposed. --persist FILE also writes the setting to
a sysctl.d file (atomically, keeping its other lines) when a port checked in the
range is not reserved there yet, and records there, on a comment line, the
ports the doctor added. --stale lists the reservations where nothing listens;
--prune (with --apply and --persist FILE) removes those the FILE records as
the doctor's, never an operator's own. --dry-run shows what --apply, --persist
and --prune would change, before and after, and writes nothing.

exit status:
  {EXIT_OK}  nothing proposed (with --apply: every port proposed is reserved now)
  {EXIT_FOUND}  some port at risk proposed (with --dry-run: still at risk)
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: not Linux, /proc unreadable, or no right to write (--apply
     without root, an unwritable --persist FILE), in which case nothing is written
     (the report is printed all the same)"""


def register(commands: Commands) -> None:
    """Add the `doctor` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "doctor",
        help="find the server ports of this host that clients could connect themselves to; reserve them (--apply)",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--port",
        type=port_list,
        action="extend",
        default=[],
        metavar="P[,P...]",
        help="also check port P, for a service that is down right now, and propose it whatever its age (repeatable)",
    )
    parser.add_argument(
        "--only", action="store_true", help="propose to reserve only the ports named with --port, no other listener"
    )
    parser.add_argument(
        "--exclude",
        type=port_list,
        action="extend",
        default=[],
        metavar="P[,P...]",
        help="never propose to reserve port P (repeatable)",
    )
    parser.add_argument(
        "--min-age",
        type=nonnegative_seconds,
        default=DEFAULT_MIN_AGE,
        metavar="S",
        help=(
            f"propose a listener not named with --port only if its process has run for S seconds "
            f"(default {count(DEFAULT_MIN_AGE)}: younger ones are transient; 0 proposes all)"
        ),
    )
    parser.add_argument(
        "--pid",
        type=pid_number,
        action="append",
        default=[],
        metavar="PID",
        help=(
            "also tell whether process PID is guarded, and by which guard (the Python guard, the native guard of "
            "selfguard run --native), or that there is no such process (repeatable)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument("--apply", action="store_true", help=f"reserve the ports proposed in {SYSCTL} (root)")
    parser.add_argument(
        "--persist",
        metavar="FILE",
        help=(
            f"with --apply, also write the setting to the sysctl.d file FILE (e.g. {SYSCTL_FILE}), recording "
            "there the ports the doctor added"
        ),
    )
    parser.add_argument(
        "--stale", action="store_true", help="list the reservations where nothing listens now, and whose they are"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="with --apply and --persist FILE, unreserve the ports FILE records as the doctor's where nothing listens",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what --apply (and --persist, --prune) would change; write nothing"
    )

    def handle(args: argparse.Namespace) -> int:
        if args.persist is not None and not (args.apply or args.dry_run or args.stale):
            parser.error(
                "--persist FILE goes with --apply (or --dry-run, to see what it would write; or --stale, to tell "
                "the reservations FILE records as the doctor's)"
            )
        if args.prune and (args.persist is None or not (args.apply or args.dry_run)):
            parser.error(
                "--prune goes with --apply (or --dry-run) and --persist FILE: FILE records which reservations "
                "the doctor added, the only ones it removes"
            )
        if args.only and not args.port:
            parser.error("--only keeps to the ports named with --port: name some (--port P[,P...])")
        return run(args)

    parser.set_defaults(func=handle)


def run(args: argparse.Namespace) -> int:
    """Run the command; its exit status is in DESCRIPTION."""
    try:
        record = recorded_ports(args.persist) if args.persist is not None else None
        report = examine(args.port, only=args.only, exclude=args.exclude, min_age=args.min_age, record=record)
        if args.pid:
            from . import process as _process

            report["processes"] = [_process.examine(pid) for pid in args.pid]
            # Kept for scripts written before "processes": whether the native guard is active.
            report["native_guard"] = {str(found["pid"]): bool(found["native"]) for found in report["processes"]}
    except (OSError, ValueError) as exc:
        # A /proc this process may not read.
        raise CannotRun(f"cannot examine this host: {exc}") from exc
    failure: Optional[str] = None
    applied = args.apply and not args.dry_run
    if args.apply or args.dry_run:
        failure = _apply(args, report, applied)
    print(json.dumps(report, indent=2) if args.json else render(report, stale=args.stale or args.prune))
    if failure is not None:
        # After the report: a refusal (no root, a read-only /proc/sys) still leaves the findings and recipes.
        raise CannotRun(failure)
    # carry_out() checked that the kernel now reserves every port proposed.
    return EXIT_FOUND if report["to_reserve"] and not applied else EXIT_OK


def _apply(args: argparse.Namespace, report: dict[str, Any], applied: bool) -> Optional[str]:
    """Plan and (unless a dry run) carry out --apply into report["apply"]; return why it failed, if it did."""
    outcome: dict[str, Any] = {"dry_run": not applied, "sysctl": None, "persist": None, "removed": [], "error": None}
    outcome["boot_override"] = None
    report["apply"] = outcome
    error: Optional[str] = None
    try:
        checked = [p["port"] for p in report["ports"] if p["in_range"] and not p["skipped"]]
        changes = plan(report["to_reserve"], checked, args.persist, report["prunable"] if args.prune else ())
    except CannotRun as exc:  # an unreadable --persist FILE
        error = outcome["error"] = str(exc)
        return error
    except (OSError, ValueError) as exc:
        error = outcome["error"] = f"cannot read {RESERVED_FILE}: {exc}"
        return error
    try:
        if applied:
            carry_out(changes)
            still = [port for port in changes.removed if covers(read_reserved(), port)]
            if still:
                raise CannotRun(f"{SYSCTL} was written but still reserves {still}")
        else:
            # What the real --apply would meet; it stays a dry run (exit status 1 or 0, not 3).
            outcome["would_fail"] = rights_problem(changes)
    except CannotRun as exc:
        error = str(exc)
    except OSError as exc:
        # carry_out words the failures it expects; this is any other.
        error = f"--apply failed: {exc}"
    if changes.persist is not None:
        # Checked after writing: the warning holds whether or not this run changed the file.
        outcome["boot_override"] = boot_override(changes.persist.path, changes.persist.after)
    outcome.update(
        sysctl=asdict(changes.sysctl),
        persist=asdict(changes.persist) if changes.persist else None,
        removed=changes.removed,
        error=error,
    )
    return error
