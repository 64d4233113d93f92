"""`selfguard doctor --apply / --persist / --dry-run`, for real, as root in throwaway network namespaces.

net.ipv4.ip_local_reserved_ports is per network namespace: each test writes
only its own namespace's, never the host's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from selfguard._commands import reserve

from netns_doctor import in_netns, require_netns, require_nobody_can_run_python

P = 40000  # even, like 32768, where a new namespace's range starts: a port at high risk


def apply_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout)["apply"]


def test_apply_merges_the_ports_at_risk_with_the_reservations_already_there():
    """A listener and a --port inside the range are added to the reserved list; nothing already reserved is dropped."""
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "1000,40100,40200-40210")
server = socket.create_server(("127.0.0.1", 40050))
done = doctor("--apply", "--json", "--port", "40211", "--min-age", "0")
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports")}
"""
    )
    done = found["done"]
    assert (0, "") == (done["status"], done["stderr"])
    assert "1000,40050,40100,40200-40211" == found["reserved"]
    applied = apply_json(done["stdout"])
    assert {
        "path": "/proc/sys/net/ipv4/ip_local_reserved_ports",
        "before": "1000,40100,40200-40210",
        "after": "1000,40050,40100,40200-40211",
        "changed": True,
        "written": True,
        "recorded_before": None,  # only a sysctl.d file records the doctor's ports
        "recorded_after": None,
    } == applied["sysctl"]
    assert applied["dry_run"] is False and applied["persist"] is None


def test_apply_keeps_every_one_of_twelve_thousand_reservations():
    """A 72 KB reserved list is read whole and written whole: the kernel takes 4095 bytes a write, reads once."""
    found = in_netns(
        """
existing = ",".join(str(port) for port in range(1025, 25025, 2))  # 12,000 ports, none adjacent
fd = os.open(PROC + "ip_local_reserved_ports", os.O_WRONLY)
data, done = (existing + "\\n").encode(), 0
while done < len(data):  # the kernel takes at most 4095 bytes a write; later writes add to the set
    done += os.write(fd, data[done:])
os.close(fd)
before = sysctl("ip_local_reserved_ports")
server = socket.create_server(("127.0.0.1", 40050))
done = doctor("--apply", "--json", "--min-age", "0")
result = {"done": done, "existing": existing, "before": before, "after": sysctl("ip_local_reserved_ports")}
"""
    )
    done = found["done"]
    assert found["existing"] == found["before"]  # the set-up reserved all 12,000
    assert (0, "") == (done["status"], done["stderr"])
    report = json.loads(done["stdout"])
    assert found["existing"] == report["reserved"]  # doctor read the whole list
    assert found["existing"] + ",40050" == found["after"]  # and wrote it whole, with the port at risk
    assert found["existing"] + ",40050" == report["apply"]["sysctl"]["after"]


def test_apply_twice_the_second_is_a_no_op(tmp_path: Path):
    """The second --apply --persist finds nothing at risk: it changes neither the sysctl nor the file."""
    require_nobody_can_run_python()
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        """
first = doctor("--apply", "--json", "--persist", params["conf"], "--port", "40000")
after_first = (sysctl("ip_local_reserved_ports"), open(params["conf"]).read(), os.stat(params["conf"]).st_ino)
second = doctor("--apply", "--json", "--persist", params["conf"], "--port", "40000")
after_second = (sysctl("ip_local_reserved_ports"), open(params["conf"]).read(), os.stat(params["conf"]).st_ino)
# The second run, as a user who may write nothing, must succeed too: it tries to write nothing.
third = doctor("--apply", "--json", "--port", "40000", as_nobody=True)
text = doctor("--apply", "--persist", params["conf"], "--port", "40000")
result = {"first": first, "second": second, "third": third, "text": text, "after": [after_first, after_second]}
""",
        conf=str(conf),
    )
    assert 0 == found["first"]["status"], found["first"]["stderr"]
    first, second = apply_json(found["first"]["stdout"]), apply_json(found["second"]["stdout"])
    assert first["sysctl"]["written"] and first["persist"]["written"]
    assert 0 == found["second"]["status"], found["second"]["stderr"]
    assert (False, False) == (second["sysctl"]["changed"], second["sysctl"]["written"])
    assert (False, False) == (second["persist"]["changed"], second["persist"]["written"])
    after_first, after_second = found["after"]
    assert after_first == after_second  # same list, same content, same inode: the file was not even replaced
    assert "40000" == after_first[0]
    assert after_first[1].endswith("\nnet.ipv4.ip_local_reserved_ports = 40000\n")
    assert (0, "") == (found["third"]["status"], found["third"]["stderr"])
    text = found["text"]["stdout"]
    assert "Nothing to apply:\n  net.ipv4.ip_local_reserved_ports unchanged: no port proposed\n" in text
    assert f"  {conf} unchanged: it already reserves every port checked in the range\n" in text


def test_nothing_at_risk_writes_nothing(tmp_path: Path):
    """With no port at risk, --apply --persist creates no file and leaves the list as it was; exit 0."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "40000")
done = doctor("--apply", "--json", "--persist", params["conf"], "--port", "80")
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports"), "exists": os.path.exists(params["conf"])}
""",
        conf=str(conf),
    )
    done = found["done"]
    assert (0, "") == (done["status"], done["stderr"])
    assert ("40000", False) == (found["reserved"], found["exists"])
    applied = apply_json(done["stdout"])
    assert not applied["sysctl"]["changed"] and not applied["sysctl"]["written"]
    assert not applied["persist"]["changed"] and not applied["persist"]["written"]
    assert [] == sorted(os.listdir(tmp_path))  # no temporary file left behind either


@pytest.fixture
def shared_dir() -> Any:
    """A directory anyone may write to, so that only the sysctl's own permission can stop a user there."""
    path = tempfile.mkdtemp(prefix="selfguard-test-")
    os.chmod(path, 0o777)
    yield Path(path)
    shutil.rmtree(path)


def test_without_root_apply_fails_in_one_line_and_writes_nothing(shared_dir: Path):
    """As nobody, --apply exits 3 with one line naming the need for root, and writes neither the list nor the file."""
    require_nobody_can_run_python()
    conf = shared_dir / "90-selfguard.conf"
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "1000")
done = doctor("--apply", "--persist", params["conf"], "--port", "40000", as_nobody=True)
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports"), "files": os.listdir(params["dir"])}
""",
        conf=str(conf),
        dir=str(shared_dir),
    )
    done = found["done"]
    assert 3 == done["status"]
    refusal = "--apply needs root: cannot write /proc/sys/net/ipv4/ip_local_reserved_ports: Permission denied"
    assert [f"selfguard doctor: {refusal}"] == done["stderr"].splitlines()
    # The report is printed all the same, and says what was not done.
    assert "port 40000 (not listening now, --port): high:" in done["stdout"]
    assert f"\nNot applied: {refusal}\nWhat --apply would have changed:\n" in done["stdout"]
    assert ("1000", []) == (found["reserved"], found["files"])


def test_an_unwritable_persist_file_writes_nothing_either(tmp_path: Path):
    """As root, a --persist FILE in a missing directory exits 3, and the live list is left as it was."""
    conf = tmp_path / "no-such-dir" / "90-selfguard.conf"
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "1000")
done = doctor("--apply", "--persist", params["conf"], "--port", "40000")
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports")}
""",
        conf=str(conf),
    )
    done = found["done"]
    assert 3 == done["status"]
    assert [f"selfguard doctor: cannot write {conf}: No such file or directory"] == done["stderr"].splitlines()
    assert f"Not applied: cannot write {conf}: No such file or directory\n" in done["stdout"]
    assert "1000" == found["reserved"]


def test_dry_run_shows_before_and_after_and_writes_nothing(tmp_path: Path):
    """--dry-run reports both changes, before -> after, in text and JSON, and leaves list and file untouched."""
    conf = tmp_path / "99-local.conf"
    original = "# ours\nvm.swappiness = 10\nnet.ipv4.ip_local_reserved_ports = 5000\n"
    conf.write_text(original)
    inode = conf.stat().st_ino
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "1000")
text = doctor("--dry-run", "--persist", params["conf"], "--port", "40000")
data = doctor("--dry-run", "--json", "--persist", params["conf"], "--port", "40000")
result = {"text": text, "json": data, "reserved": sysctl("ip_local_reserved_ports")}
""",
        conf=str(conf),
    )
    assert "1000" == found["reserved"]
    assert (original, inode) == (conf.read_text(), conf.stat().st_ino)
    assert [conf.name] == os.listdir(tmp_path)
    assert 1 == found["json"]["status"]  # still at risk: nothing was reserved
    applied = apply_json(found["json"]["stdout"])
    assert applied["dry_run"] is True
    assert ("1000", "1000,40000", True, False) == tuple(
        applied["sysctl"][k] for k in ("before", "after", "changed", "written")
    )
    assert ("5000", "1000,5000,40000", True, False) == tuple(
        applied["persist"][k] for k in ("before", "after", "changed", "written")
    )
    text = found["text"]["stdout"]
    assert 1 == found["text"]["status"]
    assert "Dry run, nothing written:" in text
    assert "would set net.ipv4.ip_local_reserved_ports" in text
    assert "    before: 1000\n    after:  1000,40000\n" in text
    assert f"would write {conf}:" in text
    assert (
        "    before: net.ipv4.ip_local_reserved_ports = 5000\n"
        "    after:  net.ipv4.ip_local_reserved_ports = 1000,5000,40000\n"
    ) in text


def test_persist_keeps_the_files_other_lines_and_its_reservations(tmp_path: Path):
    """The first reservation line is replaced in place by the merged list, later ones dropped, the rest kept."""
    target = tmp_path / "sysctl.conf"
    target.write_text(
        "# site settings\n"
        "-net/ipv4/ip_local_reserved_ports=5000\n"
        "net.ipv4.tcp_syncookies = 1\n"
        "net.ipv4.ip_local_reserved_ports = 6000-6001\n"
    )
    target.chmod(0o640)
    link = tmp_path / "99-sysctl.conf"
    link.symlink_to(target.name)  # as Debian's /etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "1000")
result = doctor("--apply", "--persist", params["conf"], "--port", "40000", "--json")
""",
        conf=str(link),
    )
    assert 0 == found["status"], found["stderr"]
    assert link.is_symlink()  # written through the link, not over it
    assert (
        "# site settings\n"
        "# selfguard doctor added: 40000\n"  # the record: only this port is the doctor's to remove
        "net.ipv4.ip_local_reserved_ports = 1000,5000,6000-6001,40000\n"
        "net.ipv4.tcp_syncookies = 1\n"
    ) == target.read_text()
    assert 0o640 == target.stat().st_mode & 0o777
    assert sorted([target.name, link.name]) == sorted(os.listdir(tmp_path))


def test_persist_records_a_live_reservation_the_file_lacks(tmp_path: Path):
    """A port reserved live (an earlier --apply without --persist) is written to the file; the list is not touched."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        """
sysctl("ip_local_reserved_ports", "40000")
result = doctor("--apply", "--json", "--persist", params["conf"], "--port", "40000")
""",
        conf=str(conf),
    )
    assert 0 == found["status"], found["stderr"]
    applied = apply_json(found["stdout"])
    assert (False, False) == (applied["sysctl"]["changed"], applied["sysctl"]["written"])
    assert (None, "40000", True) == tuple(applied["persist"][k] for k in ("before", "after", "written"))
    assert conf.read_text().endswith("\nnet.ipv4.ip_local_reserved_ports = 40000\n")


RELOOP = """
port = params["port"]
sysctl("ip_local_port_range", f"{port} {port + 1}")  # the only first-pass source port is `port` itself
before = self_connects(port, params["dials"])
done = doctor("--apply", "--json", "--port", str(port))
after = self_connects(port, params["dials"])
result = {"done": done, "before": before, "after": after, "reserved": sysctl("ip_local_reserved_ports")}
"""


def test_after_apply_a_reconnect_loop_meets_no_self_connect():
    """With the range narrowed to P P+1, an unguarded loop to P meets itself; after --apply it never does."""
    dials = 200
    found = in_netns(RELOOP, port=P, dials=dials)
    done = found["done"]
    assert 0 == done["status"], done["stderr"]
    assert str(P) == found["reserved"]
    assert "high" == json.loads(done["stdout"])["ports"][0]["risk"]
    assert found["before"] >= dials // 2  # measured here: every one of them
    assert 0 == found["after"]


def test_persist_needs_apply_or_dry_run():
    """--persist alone is a usage error: it would otherwise do nothing, silently."""
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "doctor", "--persist", "/nonexistent/x.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert done.stderr.splitlines()[-1] == (
        "selfguard doctor: error: --persist FILE goes with --apply (or --dry-run, to see what it would write; "
        "or --stale, to tell the reservations FILE records as the doctor's)"
    )


def test_a_read_only_proc_sys_as_in_a_container_keeps_the_report_and_the_recipes():
    """Containers mount /proc/sys read-only: --apply exits 3, but prints the report and recipes (text and JSON) first.

    --dry-run there says the real --apply would fail, and stays a dry run (exit 1).
    """
    require_netns()
    script = (
        "ip link set lo up && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        'for flags in "--apply" "--apply --json" "--dry-run --json"; do '
        '"$@" $flags; echo "status $?"; echo "stderr-follows" >&2; done; '
        "cat /proc/sys/net/ipv4/ip_local_reserved_ports"
    )
    command = [sys.executable, "-m", "selfguard", "doctor", "--port", str(P)]
    done = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True, timeout=120
    )
    refusal = (
        "cannot write /proc/sys/net/ipv4/ip_local_reserved_ports: Read-only file system; "
        "in a container, set it with the container's sysctls (the doctor prints recipes)"
    )
    text, as_json, dry, reserved = done.stdout.split("status ")[0], *done.stdout.split("status ")[1:]
    errors = done.stderr.split("stderr-follows\n")
    # --apply, as text: the whole report with the recipes, then the refusal; exit 3.
    assert as_json.startswith("3\n") and f"port {P} (not listening now, --port): high:" in text
    assert f"docker run --sysctl net.ipv4.ip_local_reserved_ports={P} IMAGE" in text
    assert f"Not applied: {refusal}\n" in text
    assert [f"selfguard doctor: {refusal}"] == errors[0].splitlines()
    # --apply --json: the JSON report, with the refusal in it; exit 3.
    report = json.loads(as_json[2:])
    assert dry.startswith("3\n") and refusal == report["apply"]["error"]
    assert [P] == report["to_reserve"] and report["containers"]["docker_run"]
    assert (True, False) == (report["apply"]["sysctl"]["changed"], report["apply"]["sysctl"]["written"])
    # --dry-run: still a dry run (exit 1: at risk), saying what the real one would meet.
    dry_report = json.loads(dry[2:])
    assert reserved.startswith("1\n")
    assert refusal.replace("(the doctor prints recipes)", "(the recipes above)") == dry_report["apply"]["would_fail"]
    assert "" == errors[2]
    assert [""] == reserved[2:].splitlines()  # the list still empty


def test_a_list_the_kernel_refuses_half_way_is_put_back_as_it_was():
    """The first 4095 bytes replace the set; when a later piece is refused, the old list is written back."""
    found = in_netns(
        """
from selfguard._kernel import write_port_list
sysctl("ip_local_reserved_ports", "1000,40100,40200-40210")
before = sysctl("ip_local_reserved_ports")
bad = ",".join(str(port) for port in range(1025, 5025, 2)) + ",70000"  # 12 KB; the last piece is refused
fd = os.open(PROC + "ip_local_reserved_ports", os.O_WRONLY)
try:
    write_port_list(fd, bad, restore=before)
    error = None
except OSError as exc:
    error = exc.errno
os.close(fd)
result = {"error": error, "before": before, "after": sysctl("ip_local_reserved_ports")}
"""
    )
    assert 22 == found["error"]  # EINVAL
    assert found["before"] == found["after"] == "1000,40100,40200-40210"


def _sysctl_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            path.symlink_to(text[2:].strip())
        else:
            path.write_text(text)


def test_boot_override_names_the_file_applied_last_that_drops_the_doctors_ports(tmp_path: Path):
    """/etc/sysctl.conf (applied last, also through 99-sysctl.conf) and later sysctl.d files beat 90-selfguard.conf."""
    setting = "net.ipv4.ip_local_reserved_ports = "
    _sysctl_tree(
        tmp_path,
        {
            "etc/sysctl.d/90-selfguard.conf": setting + "40100\n",
            "etc/sysctl.d/99-sysctl.conf": "-> ../sysctl.conf",
            "etc/sysctl.conf": "# the operator's\n" + setting + "8080\n",
            "usr/lib/sysctl.d/50-early.conf": setting + "1\n",  # applied before: no matter
            "run/sysctl.d/95-runtime.conf": setting + "40100\n",  # later, keeps 40100, but is not last
            "lib/sysctl.d/99-sysctl.conf": setting + "2\n",  # masked by etc/sysctl.d/99-sysctl.conf
        },
    )
    persist = str(tmp_path / "etc/sysctl.d/90-selfguard.conf")
    assert {"file": str(tmp_path / "etc/sysctl.conf"), "setting": "8080", "lost": "40100"} == reserve.boot_override(
        persist, "40100", root=str(tmp_path)
    )
    (tmp_path / "etc/sysctl.conf").write_text(setting + "8080,40000-40200\n")  # it covers the doctor's port
    assert reserve.boot_override(persist, "40100", root=str(tmp_path)) is None
    (tmp_path / "etc/sysctl.conf").write_text("# nothing\n")
    assert {"file": str(tmp_path / "run/sysctl.d/95-runtime.conf"), "setting": "40100", "lost": "40101"} == (
        reserve.boot_override(persist, "40100-40101", root=str(tmp_path))
    )
    # A file not written yet is placed by its name: 99-zz.conf comes after it.
    _sysctl_tree(tmp_path, {"etc/sysctl.d/99-zz.conf": setting + "\n"})
    new = str(tmp_path / "etc/sysctl.d/90-new.conf")
    assert "99-zz.conf" in (reserve.boot_override(new, "40100", root=str(tmp_path)) or {}).get("file", "")


def test_doctor_warns_when_a_later_sysctl_file_would_undo_persist_at_boot(tmp_path: Path):
    """In a mount and network namespace: /etc/sysctl.d/99-operator.conf sets the list; --persist 90-... is told so."""
    require_netns()
    script = f"""
set -e
ip link set lo up
mount -t tmpfs tmpfs /etc/sysctl.d
: > {tmp_path}/empty; mount --bind {tmp_path}/empty /etc/sysctl.conf
echo 'net.ipv4.ip_local_reserved_ports = 8080' > /etc/sysctl.d/99-operator.conf
{sys.executable} -m selfguard doctor --apply --persist /etc/sysctl.d/90-selfguard.conf --only --port 40100
"""
    done = subprocess.run(
        ["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr
    assert (
        "  warning: at boot, /etc/sysctl.d/99-operator.conf is applied after /etc/sysctl.d/90-selfguard.conf and "
        "sets net.ipv4.ip_local_reserved_ports = 8080: after a reboot 40100 would not be reserved"
    ) in done.stdout, done.stdout
