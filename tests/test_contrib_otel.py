"""selfguard.contrib.otel: real self-connects, collected by the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

import selfguard
from selfguard.contrib import otel
from selfguard.testing import force_self_connects

from helpers import require_forcing

NAMES = [
    "selfguard.addrnotavail",
    "selfguard.checked",
    "selfguard.faults",
    "selfguard.gave_up",
    "selfguard.relented",
    "selfguard.retries",
    "selfguard.self_connects",
]


def _collect(reader: InMemoryMetricReader) -> dict[str, Sum]:
    """Collect once and return the selfguard metrics by name (only the data, which is what an exporter sends)."""
    found = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != "selfguard":
                continue
            for metric in scope_metrics.metrics:
                assert "1" == metric.unit
                assert isinstance(metric.data, Sum)
                found[metric.name] = metric.data
    return found


def _values(reader: InMemoryMetricReader) -> dict[str, int]:
    return {name: int(next(iter(data.data_points)).value) for name, data in _collect(reader).items()}


def test_collection_reports_the_counters_of_real_self_connects(free_port):
    """After a connect that self-connected on all 3 attempts, the SDK collects 3 self-connects, 2 retries, 1 give-up."""
    require_forcing()
    reader = InMemoryMetricReader()
    otel.register(MeterProvider(metric_readers=[reader]))
    selfguard.install()
    port = free_port()
    with force_self_connects(port, times=3), socket.socket() as sock, pytest.raises(selfguard.SelfConnectError):
        sock.connect(("127.0.0.1", port))
    values = _values(reader)
    assert 3 == values["selfguard.self_connects"]
    assert 2 == values["selfguard.retries"]
    assert 1 == values["selfguard.gave_up"]
    assert {f"selfguard.{k}": v for k, v in selfguard.stats().items()} == values


def test_instruments_are_monotonic_cumulative_counters():
    """Every stats() key is reported as a monotonic sum, as observable counters are."""
    reader = InMemoryMetricReader()
    otel.register(MeterProvider(metric_readers=[reader]))
    collected = _collect(reader)
    assert NAMES == sorted(collected)
    assert sorted(f"selfguard.{k}" for k in selfguard.stats()) == NAMES
    assert all(data.is_monotonic for data in collected.values())


def test_values_are_read_at_collection_time(free_port):
    """A self-connect after a first collection shows in the next one."""
    require_forcing()
    reader = InMemoryMetricReader()
    otel.register(MeterProvider(metric_readers=[reader]))
    selfguard.install()
    assert 0 == _values(reader)["selfguard.self_connects"]
    port = free_port()
    # One forced self-connect; the guard's retry then meets the closed port.
    with force_self_connects(port, times=1), socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    assert 1 == _values(reader)["selfguard.self_connects"]


def test_register_twice_returns_the_same_instruments():
    """A second register() on the same provider creates nothing new and each metric is reported once."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = otel.register(provider)
    assert first is otel.register(provider)
    data = reader.get_metrics_data()
    assert data is not None
    names = [m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert sorted(names) == NAMES


def test_import_selfguard_does_not_import_opentelemetry():
    """`import selfguard` leaves opentelemetry unimported: it is an optional dependency."""
    code = "import sys, selfguard; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "False" == done.stdout.strip(), done.stderr


GLOBAL_PROVIDER_SCRIPT = """
import socket, sys
import selfguard
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from selfguard.contrib import otel
from selfguard.testing import force_self_connects

port = int(sys.argv[1])
otel.register()
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
selfguard.install()
with force_self_connects(port, times=3), socket.socket() as sock:
    try:
        sock.connect(("127.0.0.1", port))
    except selfguard.SelfConnectError:
        pass
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            print(m.name, next(iter(m.data.data_points)).value)
"""


def test_register_without_a_provider_reaches_the_global_provider_set_later(free_port):
    """register() before set_meter_provider() still reports through the SDK provider set afterwards."""
    require_forcing()
    # The global provider can be set once per process, so this runs in its own interpreter.
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT, str(free_port())], capture_output=True, text=True, timeout=60
    )
    assert 0 == done.returncode, done.stderr
    reported = dict(line.split() for line in done.stdout.splitlines())
    assert "3" == reported["selfguard.self_connects"]
    assert "1" == reported["selfguard.gave_up"]


def test_unregister_quiets_the_instruments_and_register_resumes():
    """After unregister() the instruments observe nothing new (the SDK may repeat a last point); register() resumes."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    selfguard.install()
    with socket.create_server(("127.0.0.1", 0)) as server:  # a port inside the range: each connect is checked

        def connect_once() -> None:
            socket.create_connection(server.getsockname(), timeout=5).close()
            server.accept()[0].close()

        connect_once()
        otel.register(provider)
        assert 1 == _values(reader)["selfguard.checked"]
        otel.unregister(provider)
        connect_once()  # stats()["checked"] is 2 now
        data = reader.get_metrics_data()  # None or the last point again, depending on the SDK's version
        assert data is None or 2 not in _values(reader).values()
        otel.unregister(provider)  # twice: harmless
        otel.register(provider)
        assert 2 == _values(reader)["selfguard.checked"]


def test_register_warns_once_when_nothing_will_ever_export():
    """With the API's no-op provider, register() warns once that an SDK and an exporter are needed."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from opentelemetry.metrics import NoOpMeterProvider\n"
        "from selfguard.contrib import otel\n"
        "otel.register(NoOpMeterProvider()); otel.register(NoOpMeterProvider())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    assert 1 == done.stderr.count("RuntimeWarning"), done.stderr
    assert "install opentelemetry-sdk and an exporter" in done.stderr


def test_register_with_an_sdk_provider_does_not_warn():
    """A real SDK provider gets no warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        otel.register(MeterProvider(metric_readers=[InMemoryMetricReader()]))


EXTRAS = [("otel", "opentelemetry", "otel"), ("prometheus", "prometheus_client", "prometheus")]


@pytest.mark.parametrize(("module", "library", "extra"), EXTRAS)
def test_an_exporter_without_its_extra_names_the_extra_to_install(module, library, extra):
    """Importing an exporter whose library is missing raises ModuleNotFoundError naming the pip extra."""
    code = (
        f"import sys; sys.modules[{library!r}] = None  # as if not installed\n"
        f"try:\n    from selfguard.contrib import {module}\n"
        "except ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode, done.stderr
    # Installed from this clone (editable), not an index: the hint names what the extra brings.
    assert f"{sys.executable} -m pip install '{library.replace('opentelemetry', 'opentelemetry-api')}>=" in (
        done.stdout
    ), done.stdout
    assert f"selfguard[{extra}]" not in done.stdout
