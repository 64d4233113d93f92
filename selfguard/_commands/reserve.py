"""`selfguard doctor --apply`: add ports to net.ipv4.ip_local_reserved_ports, now and (--persist) in a sysctl.d file."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .._kernel import parse_port_list, read_sysctl_text, write_port_list
from .cli import CannotRun
from .ports import covers, format_port_list, without

SYSCTL = "net.ipv4.ip_local_reserved_ports"
RESERVED_FILE = "/proc/sys/net/ipv4/ip_local_reserved_ports"
NEW_FILE_HEADER = "# Written by `selfguard doctor --apply --persist`: ports the kernel never picks as source ports."
# The comment above the setting that records the ports the doctor itself
# added: --prune removes only those, never a reservation of the operator's.
RECORD_PREFIX = "# selfguard doctor added:"

Ranges = list[tuple[int, int]]


@dataclass
class Change:
    """One place the reservation is kept: the live sysctl, or a sysctl.d file."""

    path: str
    before: Optional[str]  # the port list there now; None: a file without the setting (or no file)
    after: str
    changed: bool
    written: bool = False
    recorded_before: Optional[str] = None  # a sysctl.d file: the ports recorded as the doctor's (RECORD_PREFIX)
    recorded_after: Optional[str] = None


def read_reserved() -> Ranges:
    """The live list; unlike _kernel's reader, an unreadable list is an error, not an empty one."""
    # Counting an unreadable list as empty would make --apply write a list
    # that drops every reservation already there.
    return parse_port_list(read_sysctl_text(RESERVED_FILE))


def _is_setting(line: str) -> bool:
    # sysctl.d(5): "key = value", the key dotted or slashed, "-" in front to
    # ignore a failure; "#" and ";" start comments.
    key, equals, _ = line.partition("=")
    return bool(equals) and key.strip().lstrip("-").replace("/", ".") == SYSCTL


def _read_conf(path: str) -> tuple[list[str], Optional[Ranges]]:
    """The lines of a sysctl.d file (none if it does not exist) and the ports its settings of SYSCTL reserve."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return [], None
    found: Optional[Ranges] = None
    for line in lines:
        if _is_setting(line):
            # Every such line, not only the last (which is the one sysctl
            # applies): the union never drops a port someone reserved.
            found = (found or []) + parse_port_list(line.partition("=")[2])
    return lines, found


def _is_record(line: str) -> bool:
    return line.startswith(RECORD_PREFIX)


def read_record(lines: list[str]) -> Ranges:
    """The ports a sysctl.d file's RECORD_PREFIX lines say the doctor added (none: no such line)."""
    found: Ranges = []
    for line in lines:
        if _is_record(line):
            found += parse_port_list(line[len(RECORD_PREFIX) :])
    return found


def recorded_ports(path: str) -> Ranges:
    """The ports the sysctl.d file *path* records as the doctor's alone (none if it does not exist), or CannotRun.

    A recorded port that an entry of the file's setting also covers, where that entry
    reaches past the record (an operator's 40000-40200 over the doctor's 40100), is the
    operator's too: --prune must not punch a hole in their range.
    """
    try:
        lines, _ = _read_conf(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise CannotRun(f"cannot read {path}: {exc}") from exc
    return only_ours(read_record(lines), _setting_entries(lines))


def _setting_entries(lines: list[str]) -> Ranges:
    """The entries of the file's settings of SYSCTL as written (not merged), unparsable ones skipped."""
    found: Ranges = []
    for line in lines:
        if _is_setting(line):
            try:
                found += parse_port_list(line.partition("=")[2])
            except ValueError:
                continue
    return found


def only_ours(record: Ranges, entries: Ranges) -> Ranges:
    """The ports of *record* that no entry of *entries* reaching past *record* covers, as ranges."""
    ours = _ports_of(record)
    shared = {
        port
        for low, high in entries
        if not all(p in ours for p in range(low, high + 1))
        for port in range(low, high + 1)
        if port in ours
    }
    return [(port, port) for port in sorted(ours - shared)]


def _conf_text(lines: list[str], setting: str, record: str = "") -> str:
    """*lines* with the first setting of SYSCTL replaced by *setting* and any later one dropped; else it is added.

    The *record* of the doctor's own ports goes on the line above the setting
    (an old record line is dropped); an empty one is left out.
    """
    out: list[str] = []
    replaced = False
    above = [f"{RECORD_PREFIX} {record}"] if record else []
    for line in lines:
        if _is_record(line):
            continue
        if not _is_setting(line):
            out.append(line)
        elif not replaced:
            out += [*above, setting]
            replaced = True
    if not lines:
        out.append(NEW_FILE_HEADER)
    if not replaced:
        out += [*above, setting]
    return "\n".join(out) + "\n"


@dataclass
class Plan:
    """What --apply changes: the live sysctl and, with --persist, a sysctl.d file."""

    sysctl: Change
    persist: Optional[Change]
    ports: list[int]  # the ports at risk it reserves
    conf_text: Optional[str] = None  # the file's new content, when it changes
    removed: list[int] = field(default_factory=list)  # --prune: the doctor's own ports it unreserves


def plan(at_risk: Sequence[int], checked: Sequence[int], persist: Optional[str], prune: Sequence[int] = ()) -> Plan:
    """Work out the changes: the ports at risk added to the live list; to the file, when a *checked* port is not in it.

    *checked* are the ports in the ephemeral range the doctor looked at (at
    risk, or reserved already): a reservation made live earlier without
    --persist still needs its line to survive a reboot. The file records the
    ports at risk as the doctor's own. *prune* (ports the file records as the
    doctor's, none listening) come out of the live list, the file and its record.
    """
    gone = set(prune)
    live = read_reserved()
    live_after = without(live + [(port, port) for port in at_risk], gone)
    before, after = format_port_list(live), format_port_list(live_after)
    sysctl = Change(RESERVED_FILE, before, after, changed=after != before)
    result = Plan(sysctl, None, list(at_risk), removed=sorted(port for port in gone if covers(live, port)))
    if persist is not None:
        # A symlink (99-sysctl.conf -> ../sysctl.conf) is replaced through, not over.
        path = os.path.realpath(persist)
        try:
            lines, in_file = _read_conf(path)
        except (OSError, ValueError) as exc:
            raise CannotRun(f"cannot read {persist}: {exc}") from exc
        record = read_record(lines)
        record_after = format_port_list(without(record + [(port, port) for port in at_risk], gone))
        missing = [port for port in checked if not covers(in_file or [], port)]
        changed = (
            bool(missing)
            or any(covers(in_file or [], port) for port in gone)
            or record_after != format_port_list(record)
        )
        file_before = None if in_file is None else format_port_list(in_file)
        file_after = format_port_list(without((in_file or []) + live_after, gone)) if changed else (file_before or "")
        result.persist = Change(path, file_before, file_after, changed, False, format_port_list(record), record_after)
        if changed:
            result.conf_text = _conf_text(lines, f"{SYSCTL} = {file_after}", record_after)
    return result


def rights_problem(plan: Plan) -> Optional[str]:
    """Why carry_out(*plan*) would fail for want of a right to write, or None; for --dry-run, so it writes nothing."""
    if plan.sysctl.changed:
        try:
            os.close(os.open(RESERVED_FILE, os.O_WRONLY))  # opening a /proc/sys file changes nothing
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return (
                    f"cannot write {RESERVED_FILE}: {exc.strerror}; in a container, set it with the "
                    "container's sysctls (the recipes above)"
                )
            return f"--apply needs root: cannot write {RESERVED_FILE}: {exc.strerror}"
    if plan.persist is not None and plan.persist.changed:
        directory = os.path.dirname(plan.persist.path)
        if not os.path.isdir(directory):
            return f"cannot write {plan.persist.path}: {os.strerror(errno.ENOENT)}"
        if not os.access(directory, os.W_OK):  # the new file is made there, then renamed over the old one
            return f"cannot write {plan.persist.path}: {os.strerror(errno.EACCES)}"
    return None


def carry_out(plan: Plan) -> None:
    """Write what *plan* changes, or -- lacking the right to write any of it -- nothing, raising CannotRun."""
    sysctl, persist = plan.sysctl, plan.persist
    fd: Optional[int] = None
    temp: Optional[str] = None
    try:
        # Both rights are proven before either write, so that a refusal writes nothing.
        if sysctl.changed:
            try:
                fd = os.open(RESERVED_FILE, os.O_WRONLY)
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    # Containers mount /proc/sys read-only: the runtime sets it.
                    raise CannotRun(
                        f"cannot write {RESERVED_FILE}: {exc.strerror}; in a container, set it with the "
                        "container's sysctls (the doctor prints recipes)"
                    ) from exc
                raise CannotRun(f"--apply needs root: cannot write {RESERVED_FILE}: {exc.strerror}") from exc
        if persist is not None and persist.changed:
            try:
                handle, temp = tempfile.mkstemp(dir=os.path.dirname(persist.path), prefix=".selfguard-")
            except OSError as exc:
                raise CannotRun(f"cannot write {persist.path}: {exc.strerror}") from exc
            try:
                with os.fdopen(handle, "w") as f:
                    f.write(plan.conf_text or "")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise CannotRun(f"cannot write {persist.path}: {exc.strerror}") from exc
        if fd is not None:
            try:
                write_port_list(fd, sysctl.after, restore=sysctl.before)
            except OSError as exc:
                raise CannotRun(f"the kernel refused {SYSCTL}={sysctl.after}: {exc.strerror}") from exc
            sysctl.written = True
            _check_written(sysctl.after)
        if temp is not None and persist is not None:
            try:
                _install_file(temp, persist.path)
            except CannotRun as exc:
                if sysctl.written:
                    raise CannotRun(f"{exc} (the live {SYSCTL} was set)") from exc
                raise
            persist.written = True
    finally:
        if fd is not None:
            os.close(fd)
        if temp is not None and not (persist is not None and persist.written):
            try:
                os.unlink(temp)
            except FileNotFoundError:  # renamed into place before a later step failed
                pass


def _check_written(expected: str) -> None:
    """Read the live list back and compare all of it with *expected*: a port gained or lost is an error."""
    try:
        now = read_reserved()
    except (OSError, ValueError) as exc:
        raise CannotRun(f"{SYSCTL} was written but cannot be read back: {exc}") from exc
    want, got = _ports_of(parse_port_list(expected)), _ports_of(now)
    if want != got:
        lost, gained = sorted(want - got), sorted(got - want)
        raise CannotRun(
            f"{SYSCTL} was written but reads back different: "
            f"missing {format_port_list((p, p) for p in lost) or 'nothing'}, "
            f"unexpected {format_port_list((p, p) for p in gained) or 'nothing'}"
        )


def _ports_of(ranges: Ranges) -> set[int]:
    return {port for low, high in ranges for port in range(low, high + 1)}


def _install_file(temp: str, path: str) -> None:
    """Put *temp* in place of *path* at once (os.replace), keeping an existing file's mode."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644  # sysctl.d files are world-readable
    try:
        os.chmod(temp, mode)
        os.replace(temp, path)
        # The rename is durable once the directory is.
        directory = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise CannotRun(f"cannot write {path}: {exc}") from exc


# Where sysctl files are read at boot (systemd-sysctl, `sysctl --system`), in order of
# precedence: a file name in an earlier directory masks the same name in a later one.
# All files are applied sorted by name, whatever their directory; /etc/sysctl.conf last.
BOOT_DIRECTORIES = ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d")
BOOT_LAST = "etc/sysctl.conf"


def boot_order(root: str = "/", to_be: Optional[str] = None) -> list[str]:
    """The sysctl files applied at boot under *root*, in the order they are applied; *to_be*: a file not yet written."""
    by_name: dict[str, str] = {}
    for directory in BOOT_DIRECTORIES:
        try:
            names = os.listdir(os.path.join(root, directory))
        except OSError:
            names = []
        if to_be is not None and os.path.dirname(to_be) == os.path.realpath(os.path.join(root, directory)):
            names.append(os.path.basename(to_be))
        for name in names:
            if name.endswith(".conf"):
                by_name.setdefault(name, os.path.join(root, directory, name))
    order = [by_name[name] for name in sorted(by_name)]
    last = os.path.join(root, BOOT_LAST)
    if os.path.isfile(last):
        order.append(last)
    return order


def boot_override(path: str, ports: str, root: str = "/") -> Optional[dict[str, str]]:
    """The file applied after *path* at boot whose setting of SYSCTL wins, if it drops any of *ports*; else None.

    sysctl applies each setting in turn, so the last file that sets SYSCTL decides the
    list after a reboot: a later line of the operator's replaces the doctor's. None too
    when *path* is not among the files applied at boot (nothing to compare it with).
    """
    target = os.path.realpath(path)
    order = boot_order(root, to_be=target)
    real = [os.path.realpath(file) for file in order]
    if target not in real:
        return None
    winner: Optional[tuple[str, Ranges]] = None
    for file, resolved in list(zip(order, real))[real.index(target) + 1 :]:
        if resolved == target:
            continue  # the same file again (a 99-sysctl.conf -> ../sysctl.conf link)
        try:
            _, setting = _read_conf(resolved)
        except (OSError, ValueError):
            continue
        if setting is not None:
            winner = (file, setting)
    if winner is None:
        return None
    lost = [(port, port) for port in sorted(_ports_of(parse_port_list(ports))) if not covers(winner[1], port)]
    if not lost:
        return None
    return {"file": winner[0], "setting": format_port_list(winner[1]), "lost": format_port_list(lost)}


def render_apply(apply: dict[str, Any], conf_hint: str) -> list[str]:
    """What --apply (or --dry-run) did or would do, as lines of the doctor's text report."""
    dry = apply["dry_run"]
    live, conf = apply["sysctl"], apply["persist"]
    if live is None:  # it could not even work out the change
        return [f"Not applied: {apply['error']}"]
    changed = live["changed"] or bool(conf and conf["changed"])
    if dry:
        lines = ["Dry run, nothing written:"]
    elif apply["error"]:
        lines = [f"Not applied: {apply['error']}"]
        if changed:
            lines.append("What --apply would have changed:")
    else:
        lines = ["Applied:" if changed else "Nothing to apply:"]
    not_yet = dry or bool(apply["error"])
    if live["changed"]:
        lines += [
            f"  {'would set' if not_yet else 'set'} {SYSCTL} ({live['path']}):",
            f"    before: {live['before'] or '(none)'}",
            f"    after:  {live['after'] or '(none)'}",
        ]
        if apply["removed"]:
            lines.append(f"    unreserved (--prune): {format_port_list((p, p) for p in apply['removed'])}")
    else:
        lines.append(f"  {SYSCTL} unchanged: no port proposed")
    if conf is None:
        if live["changed"]:
            lines.append(f"  not persisted: it lasts until reboot; add --persist {conf_hint} to keep it")
    elif conf["changed"]:
        before = "(no such setting)" if conf["before"] is None else f"{SYSCTL} = {conf['before']}"
        lines += [
            f"  {'would write' if not_yet else 'wrote'} {conf['path']}:",
            f"    before: {before}",
            f"    after:  {SYSCTL} = {conf['after']}",
            f"    ports recorded as the doctor's: {conf['recorded_before'] or '(none)'} -> "
            f"{conf['recorded_after'] or '(none)'}",
        ]
    else:
        lines.append(f"  {conf['path']} unchanged: it already reserves every port checked in the range")
    override = apply.get("boot_override")
    if override:
        lines.append(
            f"  warning: at boot, {override['file']} is applied after {conf['path'] if conf else conf_hint} and sets "
            f"{SYSCTL} = {override['setting'] or '(none)'}: after a reboot {override['lost']} would not be "
            f"reserved; add them to {override['file']}'s line (or remove that line)"
        )
    if dry and apply.get("would_fail"):
        lines.append(f"The real --apply would fail: {apply['would_fail']}")
    return lines
