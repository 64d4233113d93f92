"""`selfguard doctor` proposes only what it should: named ports, old listeners, and prunes only its own reservations.

Each test runs as root in a throwaway network namespace with real listeners
held by real processes; the reserved list written is that namespace's alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from selfguard._commands.listeners import process_age

from conftest import require
from netns_doctor import in_netns, require_nobody_can_run_python

LISTENERS = """
import atexit
HOLD = (
    "import socket, sys, time\\n"
    "for p in sys.argv[1:]: socket.create_server(('127.0.0.1', int(p)), backlog=1).detach()\\n"
    "print('up', flush=True); time.sleep(60)"
)


def listen(*ports):
    '''A new process holding listeners on PORTS (it starts now: its age is ~0 s); stopped at exit.'''
    child = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, ports)], stdout=subprocess.PIPE, text=True)
    atexit.register(child.kill)
    assert "up\\n" == child.stdout.readline()
    return child


def report(*args, **kwargs):
    done = doctor("--json", *args, **kwargs)
    assert done["status"] in (0, 1), done["stderr"]
    return {"status": done["status"], **json.loads(done["stdout"])}


def stop(child):
    child.kill()
    child.wait()
"""


def entry(found: dict[str, Any], port: int) -> dict[str, Any]:
    (one,) = [p for p in found["ports"] if p["port"] == port]
    return one


def test_a_young_listener_is_transient_and_an_old_enough_one_is_proposed():
    """A listener whose process is younger than --min-age is listed, not proposed; older, or named, it is proposed."""
    found = in_netns(
        LISTENERS
        + """
listen(40010)
young = report()  # the default --min-age, 600 s
time.sleep(1.5)
result = {"young": young, "old": report("--min-age", "1"), "strict": report("--min-age", "60"),
          "named": report("--port", "40010")}
"""
    )
    young = found["young"]
    assert ([], [40010], 0) == (young["to_reserve"], young["not_proposed"], young["status"])
    assert young["reserved_after"] is None  # nothing to reserve: no setting, no recipes
    port = entry(young, 40010)
    assert port["at_risk"] and port["age"] < 60
    assert port["skipped"].startswith("transient: its process started ")
    assert port["skipped"].endswith(" s ago, less than --min-age 600 s (name it with --port to reserve it)")
    assert ([40010], 1, "40010") == (found["old"]["to_reserve"], found["old"]["status"], found["old"]["reserved_after"])
    assert 1.5 <= entry(found["old"], 40010)["age"] < 60
    assert [40010] == found["strict"]["not_proposed"]
    assert [40010] == found["named"]["to_reserve"]  # named with --port: the operator's word beats its age


def test_only_reserves_exactly_the_ports_named():
    """--only --port P,Q proposes and reserves P and Q, and no other listener at risk, however old."""
    found = in_netns(
        LISTENERS
        + """
listen(40010, 40012)
done = doctor("--apply", "--json", "--min-age", "0", "--only", "--port", "40012,40020")
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports")}
"""
    )
    done = found["done"]
    assert (0, "") == (done["status"], done["stderr"])
    assert "40012,40020" == found["reserved"]
    report = json.loads(done["stdout"])
    assert [40012, 40020] == report["to_reserve"]
    assert "not named with --port (--only)" == entry(report, 40010)["skipped"]


def test_exclude_leaves_a_port_out():
    """--exclude P keeps a listener at risk out of the proposal and of --apply; the others are reserved."""
    found = in_netns(
        LISTENERS
        + """
listen(40010, 40012)
done = doctor("--apply", "--json", "--min-age", "0", "--exclude", "40010", "--exclude", "40030")
result = {"done": done, "reserved": sysctl("ip_local_reserved_ports")}
"""
    )
    assert (0, "") == (found["done"]["status"], found["done"]["stderr"])
    assert "40012" == found["reserved"]
    assert "excluded (--exclude)" == entry(json.loads(found["done"]["stdout"]), 40010)["skipped"]


def test_repeated_apply_persist_does_not_pile_up_transient_ports(tmp_path: Path):
    """Three --apply --persist runs, each meeting a new short-lived listener, reserve only the service's port."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        LISTENERS
        + """
service = listen(40100)
time.sleep(1.5)  # older than --min-age 1; each tool below is younger
runs = []
for port in (40010, 40012, 40014):
    tool = listen(port)
    runs.append(doctor("--apply", "--json", "--min-age", "1", "--persist", params["conf"]))
    stop(tool)
result = {"runs": runs, "reserved": sysctl("ip_local_reserved_ports"), "conf": open(params["conf"]).read()}
""",
        conf=str(conf),
    )
    assert [0, 0, 0] == [run["status"] for run in found["runs"]], [run["stderr"] for run in found["runs"]]
    assert "40100" == found["reserved"]
    assert found["conf"].endswith("\n# selfguard doctor added: 40100\nnet.ipv4.ip_local_reserved_ports = 40100\n"), (
        found["conf"]
    )


def test_stale_lists_and_prune_removes_only_the_doctors_own_reservations(tmp_path: Path):
    """Reservations nothing listens on are listed with whose they are; --prune removes only those FILE records."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        LISTENERS
        + """
sysctl("ip_local_reserved_ports", "41000,42000-42009")  # the operator's own
service = listen(40100, 40102)
added = doctor("--apply", "--json", "--min-age", "0", "--persist", params["conf"])
stop(service)  # 40100 and 40102 are no longer served; 40102 is still wanted, named with --port
listing = doctor("--stale", "--persist", params["conf"], "--port", "40102")
dry = report("--dry-run", "--prune", "--persist", params["conf"], "--port", "40102")
unchanged = sysctl("ip_local_reserved_ports")
pruned = doctor("--apply", "--prune", "--persist", params["conf"], "--port", "40102")
result = {"added": added, "listing": listing, "dry": dry, "unchanged": unchanged, "pruned": pruned,
          "reserved": sysctl("ip_local_reserved_ports"), "conf": open(params["conf"]).read()}
""",
        conf=str(conf),
    )
    assert 0 == found["added"]["status"], found["added"]["stderr"]
    listing = found["listing"]["stdout"]
    assert (
        "Reserved, but nothing listens there now (nor named with --port):\n"
        "  40100: added by the doctor (recorded in --persist FILE): --prune removes it\n"
        "  41000: not recorded as the doctor's: yours to remove, if no service needs it\n"
        "  42000-42009: not recorded as the doctor's: yours to remove, if no service needs it\n"
    ) in listing
    dry = found["dry"]
    assert [40100] == dry["prunable"]  # 40102 is named: still wanted, though down
    assert "40100,40102,41000,42000-42009" == found["unchanged"]  # the dry run wrote nothing
    assert [40100] == dry["apply"]["removed"]
    assert "40102,41000,42000-42009" == dry["apply"]["sysctl"]["after"]
    pruned = found["pruned"]
    assert 0 == pruned["status"], pruned["stderr"]
    assert "    unreserved (--prune): 40100\n" in pruned["stdout"]
    assert "40102,41000,42000-42009" == found["reserved"]
    assert found["conf"].endswith(
        "\n# selfguard doctor added: 40102\nnet.ipv4.ip_local_reserved_ports = 40102,41000,42000-42009\n"
    ), found["conf"]


def test_as_nobody_json_dry_run_and_hidden_names_are_told():
    """Without root: --apply --json still prints JSON; --dry-run says the real one needs root; names are said hidden."""
    require_nobody_can_run_python()
    found = in_netns(
        LISTENERS
        + """
listen(40010)
refused = doctor("--apply", "--json", "--min-age", "0", as_nobody=True)
dry = doctor("--dry-run", "--min-age", "0", as_nobody=True)
result = {"refused": refused, "dry": dry}
"""
    )
    refused = found["refused"]
    need_root = "--apply needs root: cannot write /proc/sys/net/ipv4/ip_local_reserved_ports: Permission denied"
    assert 3 == refused["status"]
    assert [f"selfguard doctor: {need_root}"] == refused["stderr"].splitlines()
    report = json.loads(refused["stdout"])
    assert need_root == report["apply"]["error"]
    assert [40010] == report["to_reserve"] == report["owners_hidden"]
    assert [] == entry(report, 40010)["processes"]
    dry = found["dry"]
    assert (1, "") == (dry["status"], dry["stderr"])  # a dry run: at risk, not "could not run"
    assert f"\nThe real --apply would fail: {need_root}\n" in dry["stdout"]
    assert (
        "Process names (and ages) hidden for port(s) 40010: only root may read another user's /proc/PID/fd; run "
        "the doctor as root to see them."
    ) in " ".join(dry["stdout"].split())


def test_a_process_age_agrees_with_ps():
    """process_age reads /proc/PID/stat as ps does: its figure for pid 1 and for this process matches `ps -o etimes`."""
    require(shutil.which("ps") is not None, "needs ps (procps)")
    for pid in (1, os.getpid()):
        ps = subprocess.run(["ps", "-o", "etimes=", "-p", str(pid)], capture_output=True, text=True, timeout=30)
        age = process_age(pid)
        assert age is not None and abs(int(ps.stdout) - age) <= 2, (pid, ps.stdout, age)
    assert process_age(2**22 + 1) is None  # above pid_max's ceiling: no such process


def test_prune_never_punches_a_hole_in_an_operators_range(tmp_path: Path):
    """Recorded 40100, then the operator's 40000-40200 (live and in FILE's setting): --prune keeps the whole range."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        """
added = doctor("--apply", "--persist", params["conf"], "--only", "--port", "40100")
sysctl("ip_local_reserved_ports", "40000-40200")
text = open(params["conf"]).read().replace("ports = 40100", "ports = 40000-40200")
open(params["conf"], "w").write(text)
pruned = doctor("--apply", "--json", "--prune", "--persist", params["conf"])
result = {"added": added, "pruned": pruned, "reserved": sysctl("ip_local_reserved_ports"),
          "conf": open(params["conf"]).read()}
""",
        conf=str(conf),
    )
    assert 0 == found["added"]["status"], found["added"]["stderr"]
    assert 0 == found["pruned"]["status"], found["pruned"]["stderr"]
    assert [] == json.loads(found["pruned"]["stdout"])["prunable"]
    assert "40000-40200" == found["reserved"]
    assert found["conf"].endswith("\nnet.ipv4.ip_local_reserved_ports = 40000-40200\n"), found["conf"]


def test_pruning_the_last_reserved_port_clears_the_live_list_and_the_file(tmp_path: Path):
    """The kernel ignores an empty write: the doctor writes a newline, so the last port really goes."""
    conf = tmp_path / "90-selfguard.conf"
    found = in_netns(
        """
added = doctor("--apply", "--persist", params["conf"], "--only", "--port", "40100")
before = sysctl("ip_local_reserved_ports")
pruned = doctor("--apply", "--prune", "--persist", params["conf"])
result = {"added": added, "before": before, "pruned": pruned, "reserved": sysctl("ip_local_reserved_ports"),
          "conf": open(params["conf"]).read()}
""",
        conf=str(conf),
    )
    assert 0 == found["added"]["status"], found["added"]["stderr"]
    assert "40100" == found["before"]
    assert 0 == found["pruned"]["status"], found["pruned"]["stderr"]
    assert "" == found["reserved"]
    assert "# selfguard doctor added" not in found["conf"]
    assert found["conf"].endswith("\nnet.ipv4.ip_local_reserved_ports = \n"), found["conf"]
