"""The pytest plugin: --selfguard guards a session, the selfguard marker one test; fixtures record and force."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional

import pytest

# selfguard itself is imported only once it is needed: pytest loads this
# plugin (an entry point) in every session of every environment where
# selfguard is installed -- before coverage starts measuring, and mostly in
# sessions that never ask for it.
if TYPE_CHECKING:
    from selfguard import Event
    from selfguard.testing import SelfConnectPlan

# Whether pytest_configure installed the guard, so pytest_unconfigure must
# remove it. (A module global rather than config.stash, which needs pytest 7:
# this plugin loads wherever selfguard is installed, whatever the pytest.)
_installed_here = False
# How to undo what a `selfguard` marker did for the test running now.
_undo_marker: Optional[Callable[[], Any]] = None
# Whether a test with the marker ran in this process: its counts are summarised too.
_marker_ran = False
# The counters of pytest-xdist's workers, summed as each one finishes (controller only).
_workers_stats: dict[str, int] = {}

MARKER = (
    "selfguard(**options): guard this test against TCP self-connects (without --selfguard); "
    "options as for selfguard.install(), e.g. mode='observe', retries=0"
)
# pytest's own truth values for a "bool" ini key, which it rejects without naming the key.
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("selfguard", "guard against TCP self-connects (selfguard)")
    group.addoption(
        "--selfguard",
        action="store_true",
        dest="selfguard",
        default=None,
        help="install selfguard for the whole test session (overrides the 'selfguard' ini key)",
    )
    group.addoption(
        "--no-selfguard",
        action="store_false",
        dest="selfguard",
        help="do not install selfguard, even if the 'selfguard' ini key says so",
    )
    # Read as text and judged here: pytest's type="bool" says "invalid truth value" without the key.
    parser.addini("selfguard", default="false", help="install selfguard for the whole test session (true/false)")


def _ini_wanted(config: pytest.Config) -> bool:
    raw = config.getini("selfguard")
    text = raw.strip().lower() if isinstance(raw, str) else str(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE or not text:
        return False
    where = f" in {config.inipath}" if getattr(config, "inipath", None) else ""
    raise pytest.UsageError(
        f"Invalid value {raw!r} for the 'selfguard' ini key{where}: expected true or false (or 1/0, yes/no, on/off)"
    )


def _wanted(config: pytest.Config) -> bool:
    # The command line wins over the ini file.
    option: Optional[bool] = config.getoption("selfguard")
    return _ini_wanted(config) if option is None else option


def pytest_configure(config: pytest.Config) -> None:
    global _installed_here, _marker_ran
    _installed_here = _marker_ran = False
    _workers_stats.clear()
    config.addinivalue_line("markers", MARKER)
    if not _wanted(config):
        return
    import selfguard

    # The guard is installed at configure time, so connects made while
    # collecting (module-level clients, conftest fixtures) are guarded too.
    # install() honours SELFGUARD and SELFGUARD_* as everywhere else; with
    # SELFGUARD=0 it does nothing, and the header says so.
    _installed_here = not selfguard.is_installed() and selfguard.install()


# Around each test, a guard that is on has its wrappers put back wherever they were
# displaced: pytest-socket (and any plugin like it) saves socket.socket.connect
# when it is imported -- before this plugin installs at configure time -- and
# puts that bare method back at every test's teardown. Each point below comes
# after other plugins' changes of the phase before: the setup (tryfirst:
# before fixtures), each fixture's setup (after other plugins' setup hooks),
# the call, and what is left of the teardown once a fixture's finalizers ran.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _guard_if_marked(item)
    _reassert(item.config)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    _reassert(request.config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _reassert(item.config)


def pytest_fixture_post_finalizer(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    _reassert(request.config)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Iterator[None]:
    global _undo_marker
    yield  # every plugin's teardown ran, and the fixtures' finalizers, under a marked test's guard
    undo, _undo_marker = _undo_marker, None
    if undo is not None:
        undo()
    _reassert(item.config)


def _reassert(config: pytest.Config) -> None:
    # Whoever installed the guard (--selfguard, a sitecustomize, a conftest),
    # it stays in place; selfguard is not imported for it in sessions without it.
    if "selfguard._install" in sys.modules:
        from selfguard import _install

        _install.reassert()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _installed_here
    # Only a guard this plugin installed is removed: one installed before
    # (by a sitecustomize) stays.
    if _installed_here:
        import selfguard

        selfguard.uninstall()
        _installed_here = False


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    if not _wanted(config):
        return None
    import selfguard

    if selfguard.is_installed():
        return "selfguard: installed for the session"
    return "selfguard: requested, but not installed (SELFGUARD is off in the environment)"


def _guard_if_marked(item: pytest.Item) -> None:
    """Guard a test marked `selfguard` (with its options) from its fixtures' set-up to their teardown."""
    global _undo_marker, _marker_ran
    marker = item.get_closest_marker("selfguard")
    if marker is None:
        return
    import selfguard
    from selfguard import testing

    if marker.args:
        raise TypeError(f"the selfguard marker takes keyword options only (mode=..., retries=...), got {marker.args!r}")
    _marker_ran = True
    status, before = selfguard.status(), testing.options()
    if status != "off" and not marker.kwargs:
        return  # guarded already (--selfguard, a sitecustomize), with options of its own
    # install() checks the options and raises naming a bad one: the test errors in set-up.
    if not selfguard.install(**marker.kwargs):
        return  # SELFGUARD=0 in the environment: the operator's switch wins here too
    # Undone after teardown: off again, or the options in force before this test (a
    # sitecustomize's stand-ins, once replaced, come back as the guard they stood for).
    if status == "off":
        _undo_marker = selfguard.uninstall
    elif before is None:
        _undo_marker = selfguard.install
    else:
        _undo_marker = functools.partial(selfguard.install, **before._asdict())


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A pytest-xdist worker: hand the counters to the controller, which writes the summary.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and (_wanted(session.config) or _marker_ran):
        import selfguard

        workeroutput["selfguard_stats"] = selfguard.stats()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    # pytest-xdist's controller, as each worker finishes: sum what its tests saw.
    counts = getattr(node, "workeroutput", {}).get("selfguard_stats")
    if counts:
        for name, value in counts.items():
            _workers_stats[name] = _workers_stats.get(name, 0) + value


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not (_wanted(config) or _marker_ran or _workers_stats):
        return
    import selfguard

    counts = selfguard.stats()
    for name, value in _workers_stats.items():
        counts[name] = counts.get(name, 0) + value
    if counts["self_connects"]:
        terminalreporter.write_line(
            "selfguard: {self_connects} self-connect(s) caught, {retries} retried, {gave_up} given up "
            "(reported as connection refused)".format(**counts)
        )


@pytest.fixture
def selfguard_events() -> Iterator[list[Event]]:
    """The selfguard Events of this test, in order, as a list that grows while the test runs.

    If the guard is not installed (no --selfguard), it is installed for this
    test and removed afterwards, so there are events to see. With SELFGUARD=0
    in the environment the test is skipped, with that reason.
    """
    import selfguard

    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)

    from selfguard import _install

    installed_here = "off" == selfguard.status() and selfguard.install()
    _install.reassert()  # displaced: installed, with its options; only the wrappers go back
    if not selfguard.is_installed():
        pytest.skip("selfguard is switched off in the environment (SELFGUARD=0): there are no events to record")
    selfguard.add_listener(record)
    try:
        yield events
    finally:
        selfguard.remove_listener(record)
        if installed_here:
            selfguard.uninstall()


@pytest.fixture
def force_self_connects() -> Callable[..., ContextManager[SelfConnectPlan]]:
    """selfguard.testing.force_self_connects: `with force_self_connects(port, times=1):` makes connects self-connect.

    Skips the test on kernels that cannot force a self-connect (Linux < 6.3).
    """
    from selfguard import testing

    if not testing.can_force_self_connect():
        pytest.skip("forcing a self-connect needs IP_LOCAL_PORT_RANGE (Linux >= 6.3)")
    return testing.force_self_connects
