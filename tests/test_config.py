"""Configuration: install() arguments over SELFGUARD_* variables over defaults; bad values get a clear answer."""

from __future__ import annotations

import warnings

import pytest

import selfguard
from selfguard import _config, testing


def test_with_nothing_set_the_defaults_apply():
    """With nothing set: enforce, 2 retries, EADDRNOTAVAIL retried."""
    assert _config.Options("enforce", 2, True) == _config.resolve({}, {})


def test_environment_variables_set_each_option():
    """Every option has a SELFGUARD_* variable."""
    environ = {"SELFGUARD_MODE": " Relent ", "SELFGUARD_RETRIES": "5", "SELFGUARD_RETRY_ADDRNOTAVAIL": "off"}
    assert _config.Options("relent", 5, False) == _config.resolve({}, environ)


def test_arguments_win_over_the_environment():
    """An explicit install() argument beats the environment variable."""
    environ = {"SELFGUARD_RETRIES": "5", "SELFGUARD_MODE": "observe"}
    assert _config.Options("observe", 1, True) == _config.resolve({"retries": 1}, environ)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("SELFGUARD_RETRIES", "abc"),
        ("SELFGUARD_RETRIES", "-1"),
        ("SELFGUARD_RETRIES", "101"),
        ("SELFGUARD_RETRY_ADDRNOTAVAIL", "maybe"),
    ],
)
def test_a_bad_environment_value_warns_naming_the_variable_and_uses_the_default(variable, raw):
    """A typo in a deployment warns once, names the variable, and never stops the program."""
    with pytest.warns(RuntimeWarning) as record:
        options = _config.resolve({}, {variable: raw})
    assert _config.Options() == options
    assert 1 == len(record)
    message = str(record[0].message)
    assert variable in message and "using the default" in message
    assert len(message) < 300  # a huge value is shortened, not echoed


@pytest.mark.parametrize("raw", ["strict", "obsreve", "enforce please", "é" * 10_000])
def test_a_bad_mode_falls_back_to_observe_not_to_enforce(raw):
    """A mistyped SELFGUARD_MODE gets observe, which changes no outcome, not enforce; the warning says so."""
    with pytest.warns(RuntimeWarning) as record:
        options = _config.resolve({}, {"SELFGUARD_MODE": raw, "SELFGUARD_RETRIES": "5"})
    assert _config.Options("observe", 5, True) == options  # the other, valid, settings still apply
    (warning,) = record
    message = str(warning.message)
    assert "for SELFGUARD_MODE environment variable: expected " in message
    assert message.endswith(
        "; using observe, not the default enforce: a mistyped mode gets the one that changes no outcome"
    )
    assert len(message) < 300


def test_with_a_bad_mode_the_guard_only_observes_a_self_connect(forced, free_port, monkeypatch):
    """With SELFGUARD_MODE=strict, a forced self-connect is counted but handed back as the stdlib would: no retry."""
    port = free_port()
    monkeypatch.setenv("SELFGUARD_MODE", "strict")
    with pytest.warns(RuntimeWarning, match="using observe"):
        assert selfguard.install() is True
    sock = forced(port)
    assert 0 == sock.connect_ex(("127.0.0.1", port))  # connected to itself, as without the guard
    assert sock.getsockname() == sock.getpeername()
    sock.close()
    assert (1, 0, 0) == tuple(selfguard.stats()[k] for k in ("self_connects", "retries", "gave_up"))


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("retries", -1, ValueError),
        ("retries", "2", ValueError),
        ("retries", True, ValueError),
        ("mode", "strict", ValueError),
        ("retry_addrnotavail", 1, ValueError),
        ("retires", 2, TypeError),
    ],
)
def test_a_bad_argument_raises_naming_it(argument, value, error):
    """A bad install() argument is a bug in the caller's code: it raises, naming the argument."""
    with pytest.raises(error, match=argument):
        selfguard.install(**{argument: value})
    assert not selfguard.is_installed()


@pytest.mark.parametrize("raw", ["0", "false", "OFF", " no "])
def test_selfguard_off_makes_install_a_no_op(monkeypatch, raw):
    """SELFGUARD=0/false/off turns install() into a no-op that returns False."""
    monkeypatch.setenv("SELFGUARD", raw)
    assert selfguard.install() is False
    assert not selfguard.is_installed()
    assert "connect" not in vars(__import__("socket").socket)


@pytest.mark.parametrize("raw", ["1", "true", "on", ""])
def test_selfguard_on_or_unset_lets_install_work(monkeypatch, raw):
    """SELFGUARD=1/true/on (or empty) leaves install() working."""
    monkeypatch.setenv("SELFGUARD", raw)
    assert selfguard.install() is True


def test_a_bad_selfguard_value_warns_and_keeps_the_guard_on(monkeypatch):
    """An unreadable SELFGUARD value warns, names the variable, and the default (enabled) applies."""
    monkeypatch.setenv("SELFGUARD", "perhaps")
    with pytest.warns(RuntimeWarning, match="SELFGUARD environment variable"):
        assert selfguard.install() is True


def test_install_reads_the_environment(monkeypatch):
    """install() without arguments takes SELFGUARD_* from os.environ."""
    monkeypatch.setenv("SELFGUARD_RETRIES", "7")
    selfguard.install()
    assert 7 == testing.options().retries


def test_a_bad_environment_value_is_reported_once_per_process():
    """However often install() runs, one bad value gives one warning."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            _config.resolve({}, {"SELFGUARD_RETRIES": "lots"})
    assert 1 == len(record)


def test_selfguard_off_looks_at_nothing_else(monkeypatch):
    """With the switch off, install() neither validates arguments nor warns about other variables."""
    monkeypatch.setenv("SELFGUARD", "off")
    monkeypatch.setenv("SELFGUARD_RETRIES", "lots")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert selfguard.install(retries=-1) is False


def test_install_again_resolves_every_option_afresh():
    """Options not passed to a later install() come from the environment or the defaults again."""
    selfguard.install(mode="relent", retries=4)
    selfguard.install(retries=1)
    assert _config.Options("enforce", 1, True) == testing.options()


def test_the_bool_default_is_written_as_in_the_environment():
    """The warning shows the default the way a user would set it."""
    with pytest.warns(RuntimeWarning, match="using the default true"):
        _config.resolve({}, {"SELFGUARD_RETRY_ADDRNOTAVAIL": "maybe"})


@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_variable_means_the_default_without_a_warning(raw):
    """SELFGUARD_RETRIES= (set to nothing) is the same as unset, like SELFGUARD."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _config.Options() == _config.resolve({}, {"SELFGUARD_RETRIES": raw, "SELFGUARD_MODE": raw})
