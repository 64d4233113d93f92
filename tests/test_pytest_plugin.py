"""The pytest plugin, run end to end in real pytest subprocesses (pytester): option, ini key, fixtures, entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import distribution

import pytest

from helpers import require_forcing

pytest_plugins = ["pytester"]

ASSERT_INSTALLED = """
import selfguard

def test_first():
    assert selfguard.is_installed()

def test_second():
    assert selfguard.is_installed()
"""

ASSERT_NOT_INSTALLED = """
import selfguard

def test_it():
    assert not selfguard.is_installed()
"""

# Records whether the guard is still installed once every other plugin has
# unconfigured, i.e. after the session.
RECORD_AT_THE_END = """
import pytest, selfguard

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    with open("installed-at-the-end", "w") as f:
        f.write(str(selfguard.is_installed()))
"""

SELF_CONNECT_TEST = """
import socket, pytest, selfguard

PORT = {port}

def test_events(selfguard_events, force_self_connects):
    with force_self_connects(PORT, times=3), socket.socket() as sock:
        with pytest.raises(selfguard.SelfConnectError):
            sock.connect(("127.0.0.1", PORT))
    kinds = [event.kind for event in selfguard_events]
    assert 3 == kinds.count("self_connect"), kinds
    assert "gave_up" == kinds[-1], kinds
    assert all(("127.0.0.1", PORT) == event.remote[:2] for event in selfguard_events)

def test_the_next_test_starts_empty(selfguard_events):
    assert [] == selfguard_events
"""


def test_the_option_installs_the_guard_for_the_session(pytester):
    """With --selfguard every test runs guarded, and the report header says so."""
    pytester.makepyfile(ASSERT_INSTALLED)
    result = pytester.runpytest_subprocess("--selfguard", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["selfguard: installed for the session"])


def test_without_the_option_the_guard_is_not_installed(pytester):
    """The plugin is loaded in every session but installs nothing unless asked."""
    pytester.makepyfile(ASSERT_NOT_INSTALLED)
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("selfguard:*")


def test_the_ini_key_installs_the_guard(pytester):
    """`selfguard = true` in the ini file has the effect of --selfguard."""
    pytester.makeini("[pytest]\nselfguard = true\n")
    pytester.makepyfile(ASSERT_INSTALLED)
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=2)


def test_no_selfguard_overrides_the_ini_key(pytester):
    """--no-selfguard on the command line wins over `selfguard = true` in the ini file."""
    pytester.makeini("[pytest]\nselfguard = true\n")
    pytester.makepyfile(ASSERT_NOT_INSTALLED)
    pytester.runpytest_subprocess("--no-selfguard", timeout=120).assert_outcomes(passed=1)


def test_the_guard_is_uninstalled_after_the_session(pytester):
    """The guard the plugin installed is gone once the session is over."""
    pytester.makeconftest(RECORD_AT_THE_END)
    pytester.makepyfile(ASSERT_INSTALLED)
    pytester.runpytest_subprocess("--selfguard", timeout=120).assert_outcomes(passed=2)
    assert "False" == (pytester.path / "installed-at-the-end").read_text()


def test_a_guard_installed_before_the_session_stays(pytester):
    """A guard installed before pytest configured (as a sitecustomize would) is left installed at the end."""
    pytester.makeconftest("import selfguard\nselfguard.install()\n" + RECORD_AT_THE_END)
    pytester.makepyfile(ASSERT_INSTALLED)
    pytester.runpytest_subprocess("--selfguard", timeout=120).assert_outcomes(passed=2)
    assert "True" == (pytester.path / "installed-at-the-end").read_text()


def test_the_events_fixture_sees_a_real_forced_self_connect(pytester, free_port):
    """selfguard_events lists the events of its own test only: the three self-connects and the give-up."""
    require_forcing()
    pytester.makepyfile(SELF_CONNECT_TEST.format(port=free_port()))
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=2)


def test_the_events_fixture_installs_the_guard_only_for_its_test(pytester):
    """Without --selfguard, selfguard_events installs the guard for its test and removes it afterwards."""
    pytester.makepyfile(
        """
        import selfguard

        def test_with_events(selfguard_events):
            assert selfguard.is_installed()

        def test_after():
            assert not selfguard.is_installed()
        """
    )
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=2)


def test_the_force_self_connects_fixture_is_the_testing_helper(pytester):
    """The force_self_connects fixture is selfguard.testing.force_self_connects."""
    require_forcing()
    pytester.makepyfile(
        """
        import selfguard.testing

        def test_it(force_self_connects):
            assert selfguard.testing.force_self_connects is force_self_connects
        """
    )
    pytester.runpytest_subprocess(timeout=120).assert_outcomes(passed=1)


def test_the_summary_counts_the_self_connects_caught(pytester, free_port):
    """With --selfguard, the terminal summary reports the self-connects the guard caught during the session."""
    require_forcing()
    pytester.makepyfile(SELF_CONNECT_TEST.format(port=free_port()))
    result = pytester.runpytest_subprocess("--selfguard", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["selfguard: 3 self-connect(s) caught, 2 retried, 1 given up*"])


def pytest_with_selfguard_off(pytester, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest --selfguard in pytester's directory, in a real interpreter whose environment says SELFGUARD=0."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--selfguard", "-p", "no:cacheprovider", *options],
        cwd=pytester.path,
        env={**os.environ, "SELFGUARD": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_selfguard_off_in_the_environment_is_reported(pytester):
    """With SELFGUARD=0, --selfguard installs nothing and the header says why."""
    pytester.makepyfile(ASSERT_NOT_INSTALLED)
    done = pytest_with_selfguard_off(pytester)
    assert 0 == done.returncode, done.stdout
    assert "selfguard: requested, but not installed (SELFGUARD is off in the environment)" in done.stdout


def test_the_plugin_is_loaded_through_its_pytest11_entry_point(pytester):
    """pytest finds the plugin by its entry point: with plugin autoloading off, --selfguard is unknown."""
    plugins = [e.value for e in distribution("selfguard").entry_points if e.group == "pytest11"]
    assert ["selfguard.pytest_plugin"] == plugins
    pytester.makepyfile(ASSERT_INSTALLED)
    command = [sys.executable, "-m", "pytest", "--selfguard", "-p", "no:cacheprovider"]
    loaded = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert 0 == loaded.returncode, loaded.stdout + loaded.stderr
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    unloaded = subprocess.run(command, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120)
    assert pytest.ExitCode.USAGE_ERROR == unloaded.returncode
    assert "unrecognized arguments: --selfguard" in unloaded.stderr


def test_with_selfguard_off_the_events_fixture_skips_with_the_reason(pytester):
    """SELFGUARD=0 with --selfguard: a test using selfguard_events is skipped and says why, instead of failing."""
    pytester.makepyfile(
        """
        import socket

        import pytest


        def test_my_client_survives_a_self_connect(selfguard_events, force_self_connects):
            with force_self_connects(40000, times=3), pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", 40000), timeout=5)
            assert "gave_up" == selfguard_events[-1].kind
        """
    )
    done = pytest_with_selfguard_off(pytester, "-rs")
    assert 0 == done.returncode, done.stdout
    assert "1 skipped" in done.stdout, done.stdout
    assert "SELFGUARD" in done.stdout.split("short test summary info")[-1], done.stdout


MARKED = """
import socket, pytest, selfguard
from selfguard import testing

PORT = {port}

@pytest.mark.selfguard
def test_marked_is_guarded(force_self_connects):
    assert selfguard.is_installed()
    with force_self_connects(PORT, times=3), socket.socket() as sock:
        with pytest.raises(selfguard.SelfConnectError):
            sock.connect(("127.0.0.1", PORT))

def test_unmarked_is_not():
    assert not selfguard.is_installed()

@pytest.mark.selfguard(mode="observe", retries=0)
def test_marked_with_options():
    assert ("observe", 0) == testing.options()[:2]
"""


def test_the_marker_guards_one_test_without_the_option(pytester, free_port):
    """@pytest.mark.selfguard installs the guard for its test only, with the marker's options; the summary counts it."""
    require_forcing()
    pytester.makepyfile(MARKED.format(port=free_port()))
    result = pytester.runpytest_subprocess("--strict-markers", timeout=120)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["selfguard: 3 self-connect(s) caught, 2 retried, 1 given up*"])


def test_the_marker_options_apply_under_the_session_guard_and_are_undone(pytester):
    """Under --selfguard a marked test gets its own options; the next test has the session's again."""
    pytester.makepyfile(
        """
        import pytest
        from selfguard import testing

        @pytest.mark.selfguard(mode="relent")
        def test_marked():
            assert "relent" == testing.options().mode

        def test_after():
            assert "enforce" == testing.options().mode
        """
    )
    pytester.runpytest_subprocess("--selfguard", timeout=120).assert_outcomes(passed=2)


def test_a_bad_marker_option_is_an_error_of_that_test_naming_it(pytester):
    """mode="strict" in the marker: the test errors in set-up with install()'s message; the others run."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.selfguard(mode="strict")
        def test_bad():
            pass

        def test_good():
            pass
        """
    )
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*mode*strict*"])


def test_the_summary_survives_xdist(pytester, free_port):
    """With -n 2 the workers' counters reach the controller, which prints the summary line."""
    require_forcing()
    pytest.importorskip("xdist", reason="pytest-xdist is in the test extra")
    pytester.makepyfile(SELF_CONNECT_TEST.format(port=free_port()))
    result = pytester.runpytest_subprocess("--selfguard", "-n", "2", timeout=180)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["selfguard: 3 self-connect(s) caught, 2 retried, 1 given up*"])


def test_a_bad_ini_value_names_the_key(pytester):
    """`selfguard = maybe` in the ini file: a usage error naming the key and the value, not "invalid truth value"."""
    pytester.makeini("[pytest]\nselfguard = maybe\n")
    pytester.makepyfile(ASSERT_NOT_INSTALLED)
    result = pytester.runpytest_subprocess(timeout=120)
    assert pytest.ExitCode.USAGE_ERROR == result.ret
    result.stderr.fnmatch_lines(["*Invalid value 'maybe' for the 'selfguard' ini key in *tox.ini*"])


# Three tests, each forcing a real self-connect: each must meet the guard.
EVERY_TEST_GUARDED = """
import socket, pytest, selfguard
from selfguard.testing import force_self_connect

PORT = {port}

@pytest.fixture
def dialled_in_a_fixture():
    yield self_connect()

def self_connect():
    s = socket.socket()
    force_self_connect(s, PORT)
    try:
        s.connect(("127.0.0.1", PORT))
        return "UNGUARDED"
    except selfguard.SelfConnectError:
        return "caught"
    finally:
        s.close()

@pytest.mark.parametrize("n", [1, 2, 3])
def test_guarded(n, dialled_in_a_fixture):
    assert ("caught", "caught", "active") == (dialled_in_a_fixture, self_connect(), selfguard.status())
"""

# A plugin that saves socket.socket.connect when it is imported (before
# --selfguard installs) and puts it back at each test's teardown, as pytest-socket does.
SAVE_AND_RESTORE = """
import socket

_saved = socket.socket.connect

def pytest_runtest_teardown():
    socket.socket.connect = _saved
"""


@pytest.mark.parametrize(
    "options",
    [["-p", "socket"], ["-p", "socket", "--allow-hosts=127.0.0.1"], ["-p", "no:socket", "-p", "save_and_restore"]],
    ids=["pytest-socket", "pytest-socket --allow-hosts", "a plugin that saves and restores connect"],
)
def test_a_plugin_that_puts_back_a_saved_connect_leaves_every_test_guarded(pytester, free_port, options):
    """With the real pytest-socket, or a plugin like it, every test of a --selfguard session is guarded."""
    require_forcing()
    pytest.importorskip("pytest_socket")
    pytester.makepyfile(save_and_restore=SAVE_AND_RESTORE, test_it=EVERY_TEST_GUARDED.format(port=free_port()))
    result = pytester.runpytest_subprocess("--selfguard", *options, timeout=120)
    result.assert_outcomes(passed=3)


MONKEYPATCHED_CONNECT = """
import _socket, socket, pytest, selfguard

calls = []

@pytest.fixture
def recorded(monkeypatch):
    def connect(self, address):
        calls.append(address)
        return _socket.socket.connect(self, address)
    monkeypatch.setattr(socket.socket, "connect", connect)

def test_their_replacement_is_called(recorded):
    assert 0 != socket.socket().connect_ex(("127.0.0.1", 1))  # connect_ex: untouched
    with pytest.raises(ConnectionRefusedError):
        socket.socket().connect(("127.0.0.1", 1))
    assert [("127.0.0.1", 1)] == calls

def test_afterwards_one_layer_of_guard_again():
    connect = vars(socket.socket)["connect"]
    assert ("active", True) == (selfguard.status(), connect.__wrapped__ is _socket.socket.connect)
"""


def test_a_test_that_monkeypatches_connect_gets_its_replacement_and_the_guard_comes_back_once(pytester):
    """A fixture's monkeypatch of connect is called (through the guard); its undo leaves one layer of guard."""
    pytester.makepyfile(MONKEYPATCHED_CONNECT)
    pytester.runpytest_subprocess("--selfguard", "-p", "no:socket", timeout=120).assert_outcomes(passed=2)
