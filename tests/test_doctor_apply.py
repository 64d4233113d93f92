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
done = doctor("--apply", "--json", "--port", "40211")
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
done = doctor("--apply", "--json")
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
    assert "Nothing to apply:\n  net.ipv4.ip_local_reserved_ports unchanged: no port at risk\n" in text
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
    assert (3, "") == (done["status"], done["stdout"])
    assert [
        "selfguard doctor: --apply needs root: cannot write /proc/sys/net/ipv4/ip_local_reserved_ports: "
        "Permission denied"
    ] == done["stderr"].splitlines()
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
    assert (3, "") == (done["status"], done["stdout"])
    assert [f"selfguard doctor: cannot write {conf}: No such file or directory"] == done["stderr"].splitlines()
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
        "# site settings\nnet.ipv4.ip_local_reserved_ports = 1000,5000,6000-6001,40000\nnet.ipv4.tcp_syncookies = 1\n"
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
        "selfguard doctor: error: --persist FILE goes with --apply (or --dry-run, to see what it would write)"
    )


def test_a_read_only_proc_sys_as_in_a_container_points_to_the_recipes():
    """Containers mount /proc/sys read-only: --apply exits 3 and says to use the container's sysctls instead."""
    require_netns()
    script = (
        "ip link set lo up && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        '"$@"; echo "status $?"; cat /proc/sys/net/ipv4/ip_local_reserved_ports'
    )
    done = subprocess.run(
        [
            "unshare",
            "-n",
            "-m",
            "sh",
            "-c",
            script,
            "sh",
            sys.executable,
            "-m",
            "selfguard",
            "doctor",
            "--apply",
            "--port",
            str(P),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ["status 3", ""] == done.stdout.splitlines()  # nothing on stdout but the status; the list still empty
    assert [
        "selfguard doctor: cannot write /proc/sys/net/ipv4/ip_local_reserved_ports: Read-only file system; "
        "in a container, set it with the container's sysctls (the doctor prints recipes)"
    ] == done.stderr.splitlines()


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
