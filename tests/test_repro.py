"""`selfguard repro`, run as a real command: a brute-force reconnect loop meets itself, unguarded then guarded."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from selfguard._commands.reconnect import first_hit_interval
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


def test_each_phase_states_its_self_connect_rate_and_parity(shown):
    """Each phase reports the parity of its port (the range low end's) and its self-connects per 100,000 dials."""
    low, _ = read_ephemeral_range()
    parity = "odd" if low % 2 else "even"
    assert parity == shown["connect_parity"]
    for phase in shown["phases"]:
        assert parity == phase["parity"]
        assert round(phase["self_connects"] * 100_000 / phase["attempts"], 1) == phase["self_connects_per_100000"]
        assert phase["self_connects_per_100000"] > 0
        low, high = phase["per_100000_95_interval"]
        assert 0 < low < phase["self_connects_per_100000"] < high


@pytest.mark.parametrize(
    ("dials", "low", "high"),
    # Exact for a first hit at dial N: 1 - 0.975**(1/N) and 1 - 0.025**(1/(N-1)).
    [(1, 0.025, 1.0), (2, 0.012579, 0.975), (1261, 2.0077e-5, 2.9234e-3), (14_286, 1.7722e-6, 2.5823e-4)],
)
def test_the_rate_interval_is_the_exact_one_for_a_first_hit(dials, low, high):
    """The interval inverts the geometric law of a first hit at dial N; it holds the README's 7 per 100,000."""
    found = first_hit_interval(dials)
    assert (low, high) == pytest.approx(found, rel=1e-3)
    lo, hi = found
    assert (1 - lo) ** dials == pytest.approx(0.975) and (dials == 1 or (1 - hi) ** (dials - 1) == pytest.approx(0.025))


def test_one_sample_of_79_per_100000_does_not_contradict_7():
    """The figure an operator saw (a first self-connect at dial 1,261: 79.3 per 100,000) allows the README's 7."""
    low, high = first_hit_interval(1261)
    assert low * 100_000 < 7 < high * 100_000


def test_the_text_states_the_rate_and_writes_counts_one_way():
    """The text gives the rate with the parity, and writes every count with thousands separators."""
    done = repro(*BOUNDS)
    assert 0 == done.returncode, done.stdout + done.stderr
    low, _ = read_ephemeral_range()
    parity = "odd" if low % 2 else "even"
    assert done.stdout.startswith(f"Dialling closed {parity} ports on 127.0.0.1 ")
    assert "at most 400,000 dials or 60 s per phase" in done.stdout
    lines = done.stdout.splitlines()
    rates = [line for line in lines if line.startswith(f"   self-connect rate to an {parity} port: ")]
    assert 2 == len(rates)
    for line in rates:
        # One sample: the rate comes with the interval it allows (about 2.5/N to 369/N per 100,000 dials).
        rate = float(line.split(": ")[1].split(" per ")[0].replace(",", ""))
        low, high = (
            float(x.replace(",", "")) for x in line.split("anywhere from ")[1].split(" at 95%")[0].split(" to ")
        )
        assert low < rate < high, line
        assert line.endswith(f" to {high:,g} at 95% confidence)"), line
        assert "(from 1 self-connect: anywhere from " in line, line
    # Every count of dials is written 1,234 (ports, being names, are not counts).
    counts = [line.split(" dials")[0].split()[-1] for line in lines if " dials" in line]
    assert len(counts) >= 3
    assert all(n == f"{int(n.replace(',', '')):,}" for n in counts), counts


def test_a_stop_reason_is_printed_once():
    """When a bound stops the loop, the reason is told once, in the verdict; the phase gives its counts."""
    done = repro("--max-attempts", "1")
    assert 1 == done.returncode, done.stderr
    assert 1 == done.stdout.count("--max-attempts reached"), done.stdout
    lines = done.stdout.rstrip().splitlines()
    assert "   no socket connected to itself in 1 dial (" in "\n".join(lines)
    assert lines[-1] == (
        "Not shown: unguarded: --max-attempts reached before a socket connected to itself; "
        "raise the bounds and run again"
    )


def test_the_heading_comes_before_the_progress_line():
    """On a terminal the heading is printed first, and the progress line (stderr) comes under it."""
    for _ in range(3):  # a self-connect within the first 256 dials of both phases would show no progress: try again
        main, child = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfguard", "repro", "--max-attempts", "2000"], stdout=child, stderr=child
        )
        os.close(child)
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
        os.close(main)
        text = out.decode()
        assert text.startswith("Dialling closed "), text[:200]
        if "\r  unguarded: " in text or "\r  guarded: " in text:
            progress = min(i for i in (text.find("\r  unguarded: "), text.find("\r  guarded: ")) if i >= 0)
            assert text.index("per phase.") < progress
            return
    pytest.fail("no progress line in 3 runs of 2,000 dials")
