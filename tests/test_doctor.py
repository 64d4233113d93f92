"""`selfguard doctor`, run as a real command against this host's real listening sockets and sysctls."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from selfguard._doctor import format_port_list
from selfguard._kernel import parse_port_list, read_ephemeral_range

from conftest import require


def doctor(*args: str, netns_reserved: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m selfguard doctor ARGS`; with *netns_reserved*, in a fresh network namespace reserving those."""
    command = [sys.executable, "-m", "selfguard", "doctor", *args]
    if netns_reserved is not None:
        script = 'sysctl -q -w net.ipv4.ip_local_reserved_ports="$0" && exec "$@"'
        command = ["unshare", "-n", "sh", "-c", script, netns_reserved, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def entry(report: dict[str, Any], port: int) -> dict[str, Any]:
    (found,) = [p for p in report["ports"] if p["port"] == port]
    return found


def require_netns() -> None:
    require(os.geteuid() == 0, "needs root for a network namespace (CI runs as root)")
    require(shutil.which("unshare") is not None and shutil.which("sysctl") is not None, "needs unshare and sysctl")


def test_a_listener_inside_the_range_is_at_risk(free_port):
    """A real listener on a port inside the ephemeral range is reported at risk, with its process, and exit 1."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        done = doctor("--json")
    assert 1 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    found = entry(report, port)
    assert {"listening": True, "requested": False, "in_range": True, "reserved": False, "at_risk": True} == {
        k: found[k] for k in ("listening", "requested", "in_range", "reserved", "at_risk")
    }
    assert ["127.0.0.1"] == found["addresses"]
    assert any(owner.endswith(f"[{os.getpid()}]") for owner in found["processes"]), found["processes"]
    assert port in report["at_risk"]
    assert str(port) in report["reserved_after"].split(",")


def test_the_text_report_names_the_port_and_the_sysctl_setting(free_port):
    """The text report explains the risk for the listening port and prints the sysctl command and sysctl.d line."""
    port = free_port()
    with socket.create_server(("::1", port), family=socket.AF_INET6):
        done = doctor()
    assert 1 == done.returncode, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"  port {port} ")]
    assert "listening on ::1" in line and "connect to itself" in line and "60 s" in line
    assert "sysctl -w net.ipv4.ip_local_reserved_ports=" in done.stdout
    assert "/etc/sysctl.d/" in done.stdout
    (setting,) = [line.split(" = ")[1] for line in done.stdout.splitlines() if " = " in line]
    assert str(port) in setting.split(",")


def test_a_requested_port_inside_the_range_is_at_risk_while_down(free_port):
    """--port for a port inside the range where nothing listens is at risk: that is when the self-connect happens."""
    port = free_port()
    done = doctor("--json", "--port", str(port))
    assert 1 == done.returncode, done.stderr
    found = entry(json.loads(done.stdout), port)
    assert found["requested"] and found["at_risk"] and not found["listening"]


def test_a_requested_port_outside_the_range_is_not_at_risk():
    """--port for a port below the ephemeral range is reported safe, and the exit status follows the other ports."""
    low, _ = read_ephemeral_range()
    require(low > 1, "the ephemeral range starts at port 1: no port lies below it")
    done = doctor("--json", "--port", str(low - 1))
    report = json.loads(done.stdout)
    found = entry(report, low - 1)
    assert {"requested": True, "in_range": False, "at_risk": False} == {
        k: found[k] for k in ("requested", "in_range", "at_risk")
    }
    assert "outside the ephemeral range" in found["reason"]
    assert low - 1 not in report["at_risk"]
    # Other listeners of this host may be at risk; the exit status must say so exactly then.
    assert (1 if report["at_risk"] else 0) == done.returncode


def test_nothing_at_risk_exits_0():
    """In a namespace where nothing listens, ports outside the range or reserved are safe: exit 0, no setting."""
    require_netns()
    low, _ = read_ephemeral_range()
    done = doctor("--json", "--port", str(low + 10), "--port", str(low - 1), netns_reserved=f"{low + 10}")
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert [] == report["at_risk"]
    assert report["sysctl_command"] is None
    assert entry(report, low + 10)["reserved"]


def test_the_setting_merges_the_existing_reserved_ports():
    """The printed setting keeps the reserved ports already set and adds the ports at risk, merged into ranges."""
    require_netns()
    low, _ = read_ephemeral_range()
    reserved = f"{low + 100},{low + 200}-{low + 210}"
    done = doctor("--json", "--port", str(low + 211), "--port", str(low + 50), netns_reserved=reserved)
    assert 1 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert reserved == report["reserved"]
    assert [low + 50, low + 211] == report["at_risk"]
    setting = f"{low + 50},{low + 100},{low + 200}-{low + 211}"
    assert f"sysctl -w net.ipv4.ip_local_reserved_ports={setting}" == report["sysctl_command"]
    assert f"net.ipv4.ip_local_reserved_ports = {setting}" == report["sysctl_conf_line"]


@pytest.mark.parametrize("bad", ["70000", "abc", "0", "-1", "4_2", ""])
def test_a_bad_port_is_an_argparse_error(bad):
    """--port that is not a whole number from 1 to 65535 exits 2 with a message naming the option and the value."""
    done = doctor("--port", bad)
    assert 2 == done.returncode
    assert f"argument --port: invalid port {bad!r}: expected a whole number from 1 to 65535" in done.stderr
    assert "" == done.stdout


def test_the_kernel_port_list_syntax_is_parsed():
    """ip_local_reserved_ports' syntax -- single ports and ranges, comma-separated, maybe empty -- is read as ranges."""
    assert [(8080, 8080), (9000, 9010)] == parse_port_list("8080,9000-9010\n")
    assert [] == parse_port_list("\n")


def test_port_lists_are_merged_into_the_kernel_syntax():
    """Overlapping and adjacent ranges are merged and written as the kernel writes them."""
    assert "8080,9000-9011,9013" == format_port_list([(9013, 9013), (9000, 9010), (8080, 8080), (9011, 9011)])
    assert "" == format_port_list([])
