"""`selfguard doctor`, run as a real command against this host's real listening sockets and sysctls."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import yaml

from selfguard._commands.ports import format_port_list
from selfguard._commands.recipes import container_recipes
from selfguard._kernel import parse_port_list, read_ephemeral_range, read_reserved_ports

from conftest import require
from netns_doctor import in_netns


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
        done = doctor("--json", "--min-age", "0")  # this test's process may be younger than the default
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
    """The text report names the listening port with its risk and prints the sysctl command and sysctl.d line."""
    port = free_port()
    with socket.create_server(("::1", port), family=socket.AF_INET6):
        done = doctor("--min-age", "0")
    assert 1 == done.returncode, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"  port {port} ")]
    low, _ = read_ephemeral_range()
    risk = "high" if (port - low) % 2 == 0 else "low"
    assert "listening on ::1" in line and f": {risk}: " in line
    assert "sysctl -w net.ipv4.ip_local_reserved_ports=" in done.stdout
    assert "/etc/sysctl.d/" in done.stdout
    (setting,) = [line.split(" = ")[1] for line in done.stdout.splitlines() if " = " in line]
    assert str(port) in setting.split(",")


def test_the_risk_is_explained_once_and_each_port_ranked_by_parity():
    """Ports of the range low end's parity rank high, the others low, high first; the long why is told once."""
    low, high = read_ephemeral_range()
    first, other = low + 4, low + 5  # the low end's parity, and the other one
    require(high >= first + 2, "needs an ephemeral range of at least 7 ports")
    require(not any(a <= p <= b for a, b in read_reserved_ports() for p in (first, first + 2, other)), "ports reserved")
    done = doctor("--port", str(other), "--port", str(first), "--port", str(first + 2))
    assert 1 == done.returncode, done.stderr
    ours = {f"  port {p} ": p for p in (first, first + 2, other)}
    ranked = [
        (ours[line[: len(prefix)]], line)
        for line in done.stdout.splitlines()
        for prefix in ours
        if line.startswith(prefix)
    ]
    assert [first, first + 2, other] == [p for p, _ in ranked]  # high first, then low
    parity = "odd" if low % 2 else "even"
    for _, line in ranked[:2]:
        assert line.endswith(
            f": high: {parity} like {low}, the range's low end: connect() tries these source ports first"
        )
    other_parity = "even" if low % 2 else "odd"
    assert ranked[2][1].endswith(
        f": low: {other_parity}, unlike {low}: a plain connect() picks these only when every {parity} port is taken,"
        " but a client that binds port 0 before connecting prefers them"
    )
    # The consequence is told once, not on every line.
    assert 1 == done.stdout.count("TIME_WAIT")
    assert 1 == done.stdout.count("connect to itself")

    report = json.loads(doctor("--json", "--port", str(other), "--port", str(first)).stdout)
    assert report["at_risk"].index(first) < report["at_risk"].index(other)
    assert ("high", "low") == (entry(report, first)["risk"], entry(report, other)["risk"])
    assert "TIME_WAIT" in report["risk"] and all("TIME_WAIT" not in p["reason"] for p in report["ports"])
    assert parity == report["connect_parity"]


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
    # Other listeners of this host may be at risk; the exit status must say so exactly when one is proposed.
    assert (1 if report["to_reserve"] else 0) == done.returncode


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


MEASURE = """
low = params["low"]
sysctl("ip_local_port_range", f"{low} {low + 3}")
done = doctor("--json", "--port", str(low), "--port", str(low + 1))
report = json.loads(done["stdout"])
result = {
    "status": done["status"],
    "risk": {str(p["port"]): p["risk"] for p in report["ports"]},
    "self_connects": {str(port): self_connects(port, params["dials"]) for port in (low, low + 1)},
    "after_bind_0": {str(port): self_connects(port, params["dials"], bind_first=True) for port in (low, low + 1)},
}
"""


@pytest.mark.parametrize("low", [40000, 40001])
def test_the_ranking_matches_the_self_connects_measured(low):
    """In a namespace whose range is low..low+3, the port doctor ranks high meets itself, the one it ranks low never.

    Both parities of low are tried, so a ranking that merely said "even" would fail one of them.
    """
    dials = 400
    found = in_netns(MEASURE, low=low, dials=dials)
    assert 1 == found["status"]
    risk, met = found["risk"], found["self_connects"]
    assert {str(low): "high", str(low + 1): "low"} == risk
    # Two ports of the first parity: about half the dials to `low` pick it (measured here: 87-103 of 200).
    assert met[str(low)] >= dials // 10, met
    assert 0 == met[str(low + 1)], met
    # What "low" says: a client that binds port 0 first gets the other parity from bind(), and meets it.
    assert found["after_bind_0"][str(low + 1)] >= dials // 10, found["after_bind_0"]


def test_the_container_recipes_are_well_formed(free_port):
    """docker run, a Kubernetes pod and a compose service, in JSON and text, each setting the reservation for real.

    Both runs are in fresh network namespaces with nothing listening: on the
    host, a listener coming or going between the two would change the setting.
    """
    require_netns()
    port = free_port()
    done = doctor("--json", "--port", str(port), netns_reserved="")
    assert 1 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    setting, recipes = report["reserved_after"], report["containers"]
    assert str(port) in setting.split(",")
    assert ["docker", "run", "--sysctl", f"net.ipv4.ip_local_reserved_ports={setting}", "IMAGE"] == shlex.split(
        recipes["docker_run"]
    )
    pod = yaml.safe_load(recipes["kubernetes_pod"])
    assert {
        "spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_reserved_ports", "value": setting}]}}
    } == pod
    compose = yaml.safe_load(recipes["docker_compose"])
    assert {"services": {"SERVICE": {"sysctls": {"net.ipv4.ip_local_reserved_ports": setting}}}} == compose

    text = doctor("--port", str(port), netns_reserved="").stdout
    assert str(port) == setting  # nothing else in the namespace: the same setting both times
    assert f"  {recipes['docker_run']}\n" in text
    for snippet in ("kubernetes_pod", "docker_compose"):
        assert textwrap.indent(recipes[snippet], "    ") in text


def test_a_lone_port_stays_a_string_in_the_yaml():
    """Kubernetes and compose want sysctl values as strings: a single port must not turn into a YAML integer."""
    recipes = container_recipes("40000")
    assert "40000" == yaml.safe_load(recipes["kubernetes_pod"])["spec"]["securityContext"]["sysctls"][0]["value"]
    assert (
        "40000"
        == yaml.safe_load(recipes["docker_compose"])["services"]["SERVICE"]["sysctls"][
            "net.ipv4.ip_local_reserved_ports"
        ]
    )


def test_nothing_at_risk_prints_no_recipes():
    """Without a port at risk there is nothing to reserve, in containers or anywhere."""
    require_netns()
    low, _ = read_ephemeral_range()
    done = doctor("--json", "--port", str(low - 1), netns_reserved="")
    assert 0 == done.returncode, done.stderr
    assert json.loads(done.stdout)["containers"] is None
    text = doctor("--port", str(low - 1), netns_reserved="")
    assert "docker" not in text.stdout and "Kubernetes" not in text.stdout
