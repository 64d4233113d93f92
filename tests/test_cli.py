"""The `selfguard` command line as a whole: its structure, its dispatch, its exit statuses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import selfguard.testing
from selfguard._commands import ports as _ports

from conftest import require


def require_root_namespaces() -> None:
    require(sys.platform.startswith("linux"), "needs Linux namespaces")
    require(os.geteuid() == 0, "needs root for namespaces (CI runs as root)")
    require(shutil.which("unshare") is not None, "needs unshare")


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_command_line_does_not_import_the_testing_module():
    """Product code stays clear of selfguard.testing (and the wrapt patching it does on import of its helpers)."""
    done = python(
        "import sys, selfguard.__main__, selfguard._commands.doctor, selfguard._commands.repro\n"
        "import selfguard._commands.run, selfguard._commands.watch, selfguard._commands.deploy\n"
        "print(sorted(m for m in sys.modules if m.startswith('selfguard.testing')))"
    )
    assert ("[]\n", "") == (done.stdout, done.stderr)


def test_free_port_is_still_public_in_the_testing_module():
    """selfguard.testing.free_port is public API: it stays there, as the very function the command line uses."""
    assert selfguard.testing.free_port is _ports.free_port
    assert "free_port" in selfguard.testing.__all__
    port = selfguard.testing.free_port(connect_parity=True)
    low, high = selfguard._kernel.read_ephemeral_range()
    assert low <= port <= high and (port - low) % 2 == 0


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selfguard", *args], capture_output=True, text=True, timeout=timeout)


def test_the_top_level_help_describes_every_command():
    """`selfguard --help` names each command with its one-line help, the default command, and the exit statuses."""
    done = cli("--help")
    assert (0, "") == (done.returncode, done.stderr)
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    text = " ".join(lines)
    for command, words in [
        ("repro", "show a real self-connect on this machine"),
        ("doctor", "find the server ports of this host"),
        ("run", "run a command with the guard active"),
        ("sitecustomize", "deploy the guard's sitecustomize into an interpreter"),
    ]:
        assert f"{command} {words}" in text
    assert "With no command, or with only repro's options (`selfguard --json`), runs `selfguard repro`." in text
    for status in ("0 done:", "1 found:", "2 usage error", "3 could not run"):
        assert any(line.startswith(status) for line in lines), status


@pytest.mark.parametrize("command", ["repro", "doctor", "sitecustomize"])
def test_each_command_help_tells_its_exit_statuses(command):
    """`selfguard COMMAND --help` lists 0, 1, 2 and 3 with their meaning for that command."""
    done = cli(command, "--help")
    assert 0 == done.returncode
    assert done.stdout.startswith(f"usage: selfguard {command} ")
    statuses = [
        line.split()[0] for line in done.stdout.split("exit status:\n")[1].splitlines() if line[:3] == "  " + line[2:3]
    ]
    assert ["0", "1", "2", "3"] == statuses[:4]
    assert "3  could not run" in done.stdout


@pytest.mark.parametrize("args", [["--json"], ["--max-seconds", "5", "--json"]])
def test_repro_options_without_a_command_run_repro(args):
    """A bare `selfguard` runs repro, so `selfguard --json` and `selfguard --max-seconds 5` run it too."""
    done = cli(*args, "--max-attempts", "1")
    assert 1 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert 1 == report["max_attempts"] and 1 == report["phases"][0]["attempts"]
    if "--max-seconds" in args:
        assert 5.0 == report["max_seconds"]


def test_an_unknown_top_level_word_is_the_top_levels_usage_error():
    """A word that is no command is not handed to repro: it is the top level's error, naming the commands."""
    done = cli("bogus")
    assert (2, "") == (done.returncode, done.stdout)
    assert done.stderr.startswith("usage: selfguard [-h] [--version] COMMAND ...")
    assert "invalid choice: 'bogus'" in done.stderr


@pytest.mark.parametrize("command", ["doctor", "repro"])
def test_an_unknown_option_is_the_commands_own_usage_error(command):
    """`selfguard doctor -x` shows doctor's usage, not the top level's."""
    done = cli(command, "-x")
    assert (2, "") == (done.returncode, done.stdout)
    usage, error = done.stderr.splitlines()[0], done.stderr.splitlines()[-1]
    assert usage.startswith(f"usage: selfguard {command} [-h]")
    assert f"selfguard {command}: error: unrecognized arguments: -x" == error


def test_counts_are_written_one_way_in_help_and_read_both_ways():
    """The help writes 1,000,000; --max-attempts takes 1,000 as it takes 1000, and rejects a misplaced comma."""
    done = cli("repro", "--help")
    assert "(default 1,000,000)" in " ".join(done.stdout.split())
    assert "1_000_000" not in done.stdout
    for written in ("1,000", "1000"):
        report = json.loads(cli("repro", "--json", "--max-attempts", written, "--max-seconds", "0.001").stdout)
        assert 1000 == report["max_attempts"]
    bad = cli("repro", "--max-attempts", "10,00")
    assert 2 == bad.returncode
    assert "argument --max-attempts: invalid value '10,00': expected a whole number above 0" in bad.stderr


@pytest.mark.parametrize("command", [["doctor"], ["doctor", "--json"], ["repro"], ["repro", "--json"]])
def test_an_unreadable_proc_is_could_not_run_not_a_usage_error(command):
    """With the ephemeral range unreadable (/dev/null bound over it, in a private mount namespace) the status is 3."""
    require_root_namespaces()
    script = 'mount --bind /dev/null /proc/sys/net/ipv4/ip_local_port_range && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "selfguard", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (3, "") == (done.returncode, done.stdout), done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"selfguard {command[0]}: ")
    assert "cannot read the ephemeral port range from /proc/sys/net/ipv4/ip_local_port_range" in line


@pytest.mark.parametrize(
    ("args", "command"), [(["--max-attempts", "5", "doctor"], "doctor"), (["--json", "run"], "run")]
)
def test_an_option_before_a_command_names_that_command_not_repro(args, command):
    """`selfguard --max-attempts 5 doctor` is told that options go after their command, and repro is not blamed."""
    done = cli(*args)
    assert (2, "") == (done.returncode, done.stdout)
    assert "repro" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"selfguard: error: {args[0]} comes before the command {command}: a command's options go after it "
        f"(`selfguard {command} --help` lists {command}'s)"
    )


@pytest.mark.parametrize("bad", ["-3", "0", "abc", "1.5", ""])
def test_a_bad_pid_is_a_usage_error(bad):
    """doctor --pid takes a process id above 0: -3 (a process group to kill(2)) and 0 are refused, naming the option."""
    done = cli("doctor", "--pid", bad)
    assert (2, "") == (done.returncode, done.stdout)
    assert f"argument --pid: invalid process id {bad!r}: expected a whole number above 0" in done.stderr


@pytest.mark.parametrize(
    ("option", "bad"), [("--min-age", "-1"), ("--min-age", "nan"), ("--exclude", "0"), ("--port", "80,x")]
)
def test_doctors_choice_options_reject_bad_values(option, bad):
    """--min-age takes seconds from 0 up; --exclude and --port take ports, one by one or comma-separated."""
    done = cli("doctor", option, bad)
    assert (2, "") == (done.returncode, done.stdout)
    assert f"argument {option}: invalid " in done.stderr.splitlines()[-1]


def test_only_without_a_named_port_is_a_usage_error():
    """--only keeps to the ports named with --port: with none named it would silently reserve nothing."""
    done = cli("doctor", "--only")
    assert (2, "") == (done.returncode, done.stdout)
    assert done.stderr.splitlines()[-1] == (
        "selfguard doctor: error: --only keeps to the ports named with --port: name some (--port P[,P...])"
    )


@pytest.mark.parametrize("how", ["install()", "the sitecustomize"])
def test_a_guarded_process_never_imports_the_command_line(how):
    """The guard's side (install, the connect paths, stats, status) imports nothing of selfguard._commands."""
    from selfguard._commands.run import BOOTSTRAP

    code = (
        "import socket, sys, selfguard\n"
        + ("selfguard.install()\n" if how == "install()" else "")
        + "s = socket.socket(); s.connect_ex(('127.0.0.1', 9)); s.close()\n"
        "selfguard.stats(); selfguard.status(); selfguard.reset_stats()\n"
        "print(selfguard.status(), sorted(m for m in sys.modules if m.startswith('selfguard._commands')))"
    )
    env = dict(os.environ, PYTHONPATH=BOOTSTRAP) if how == "the sitecustomize" else None
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert ("active []\n", "") == (done.stdout, done.stderr)
