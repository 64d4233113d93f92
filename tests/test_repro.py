"""`selfguard repro`, run as a real command: a brute-force reconnect loop meets itself, unguarded then guarded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from selfguard._kernel import read_ephemeral_range

# A self-connect came within 2 000-35 000 dials here (~15 us each); 400 000 dials
# make missing one vanishingly unlikely, and still end within seconds.
BOUNDS = ("--max-attempts", "400000", "--max-seconds", "60")


def repro(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfguard", "repro", *args], capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def shown() -> dict:
    """One real run with --json, shared by the tests that read its report."""
    done = repro("--json", *BOUNDS)
    assert 0 == done.returncode, done.stdout + done.stderr
    # Off a terminal there is no progress line, and the guard's log lines go into the report.
    assert "" == done.stderr
    return json.loads(done.stdout)


def test_unguarded_a_socket_connects_to_itself_and_blocks_the_port(shown):
    """Unguarded, the loop meets a self-connect, reads its own bytes back, and its close() keeps a server out."""
    (unguarded, _) = shown["phases"]
    assert "unguarded" == unguarded["name"]
    assert 1 == unguarded["self_connects"]
    assert 1 <= unguarded["attempts"] <= 400_000
    assert "b'PING'" == unguarded["echo"]
    assert unguarded["server_could_bind"] is False
    assert "Address already in use" in unguarded["bind_error"]
    assert unguarded["demonstrated"]


def test_guarded_the_guard_catches_it_and_the_port_stays_free(shown):
    """Guarded, the guard catches a self-connect, the caller only sees a refusal, and a server binds at once."""
    (_, guarded) = shown["phases"]
    assert "guarded" == guarded["name"]
    assert guarded["self_connects"] >= 1
    assert 0 == guarded["handed_back_self_connected"]
    assert guarded["caller_saw"].startswith(("ConnectionRefusedError", "SelfConnectError"))
    assert any("connected to itself" in message for message in guarded["logged"])
    assert guarded["server_could_bind"] is True
    assert guarded["bind_error"] is None
    assert guarded["demonstrated"]
    assert shown["demonstrated"]


def test_the_ports_are_distinct_and_of_the_range_low_ends_parity(shown):
    """Each phase dials its own port, inside the range and of the parity connect() tries first."""
    low, high = read_ephemeral_range()
    ports = [phase["port"] for phase in shown["phases"]]
    assert ports[0] != ports[1]
    assert all(low <= port <= high and (port - low) % 2 == 0 for port in ports)


def test_one_attempt_is_not_enough_and_exits_non_zero():
    """With --max-attempts 1 the loop stops before any self-connect, says so, and exits 1."""
    done = repro("--json", "--max-attempts", "1")
    assert 1 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert report["demonstrated"] is False
    assert "--max-attempts reached" in report["reason"]
    assert 1 == report["phases"][-1]["attempts"]


def test_the_text_report_tells_the_story():
    """Without --json, the report shows the echoed PING, the refused bind, and the free port under the guard."""
    done = repro(*BOUNDS)
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "read back b'PING'" in done.stdout
    assert "Address already in use" in done.stdout
    assert "[log] self-connect:" in done.stdout
    assert "a server binding port" in done.stdout and ": OK" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("Shown:")


@pytest.mark.parametrize(
    ("option", "value"), [("--max-attempts", "0"), ("--max-attempts", "x"), ("--max-seconds", "nan")]
)
def test_bad_bounds_are_argparse_errors(option, value):
    """A bound that is not a positive number exits 2, naming the option."""
    done = repro(option, value)
    assert 2 == done.returncode
    assert f"argument {option}: invalid value {value!r}" in done.stderr
