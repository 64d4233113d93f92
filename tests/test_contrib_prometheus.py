"""selfguard.contrib.prometheus: real self-connects, scraped over HTTP from a real prometheus_client endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.request
from typing import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, make_wsgi_app

import selfguard
from selfguard.contrib import prometheus
from selfguard.testing import force_self_connects

from helpers import require_forcing

NAMES = [
    "selfguard_checked_total",
    "selfguard_self_connects_total",
    "selfguard_retries_total",
    "selfguard_gave_up_total",
    "selfguard_relented_total",
    "selfguard_addrnotavail_total",
    "selfguard_faults_total",
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[CollectorRegistry, Callable[[], dict[str, float]]]]:
    """A fresh registry served over HTTP on 127.0.0.1, and a function that scrapes it."""
    registry = CollectorRegistry()
    server: WSGIServer = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("selfguard_"):
                name, value = line.split()
                values[name] = float(value)
            if line.startswith("# TYPE selfguard_"):
                assert "counter" == line.split()[3], line
        return values

    yield registry, scrape
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_scrape_exposes_the_counters_of_real_self_connects(endpoint, free_port):
    """After a connect that self-connected on all 3 attempts, a scrape shows 3 self-connects, 2 retries, 1 give-up."""
    require_forcing()
    registry, scrape = endpoint
    prometheus.register(registry)
    selfguard.install()
    port = free_port()
    with force_self_connects(port, times=3), socket.socket() as sock, pytest.raises(selfguard.SelfConnectError):
        sock.connect(("127.0.0.1", port))
    exposed = scrape()
    assert 3 == exposed["selfguard_self_connects_total"]
    assert 2 == exposed["selfguard_retries_total"]
    assert 1 == exposed["selfguard_gave_up_total"]
    # The scrape's own connect is counted too; nothing connects after it.
    assert {f"selfguard_{k}_total": float(v) for k, v in selfguard.stats().items()} == exposed


def test_every_stats_counter_is_exposed(endpoint):
    """Each key of selfguard.stats() has its selfguard_<key>_total series, and no other series is exposed."""
    registry, scrape = endpoint
    prometheus.register(registry)
    assert sorted(NAMES) == sorted(scrape())
    assert sorted(f"selfguard_{k}_total" for k in selfguard.stats()) == sorted(NAMES)


def test_values_are_read_at_scrape_time(endpoint, free_port):
    """A self-connect that happens after register() and after a first scrape shows in the next scrape."""
    require_forcing()
    registry, scrape = endpoint
    prometheus.register(registry)
    selfguard.install()
    assert 0 == scrape()["selfguard_self_connects_total"]
    port = free_port()
    # One forced self-connect; the guard's retry then meets the closed port.
    with force_self_connects(port, times=1), socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    exposed = scrape()
    assert 1 == exposed["selfguard_self_connects_total"]
    assert 0 == exposed["selfguard_gave_up_total"]


def test_register_twice_returns_the_same_collector(endpoint):
    """A second register() on the same registry raises nothing and exposes each series once."""
    registry, scrape = endpoint
    first = prometheus.register(registry)
    assert first is prometheus.register(registry)
    assert len(NAMES) == len(scrape())


def test_unregister_removes_the_series_and_register_brings_them_back():
    """unregister() removes the series, and a later register() brings them back."""
    registry = CollectorRegistry()
    prometheus.register(registry)
    prometheus.unregister(registry)
    assert registry.get_sample_value("selfguard_self_connects_total") is None
    prometheus.register(registry)
    assert 0 == registry.get_sample_value("selfguard_self_connects_total")
    prometheus.unregister(registry)


def test_register_defaults_to_the_global_registry():
    """register() with no argument exposes the counters on prometheus_client.REGISTRY."""
    collector = prometheus.register()
    try:
        assert collector is prometheus.register(REGISTRY)
        assert 0 == REGISTRY.get_sample_value("selfguard_gave_up_total")
    finally:
        prometheus.unregister()
    assert REGISTRY.get_sample_value("selfguard_gave_up_total") is None


def test_a_name_clash_with_another_collector_raises():
    """When the registry already has a metric named like ours, register() raises prometheus_client's ValueError."""
    registry = CollectorRegistry()
    Counter("selfguard_self_connects", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        prometheus.register(registry)


def test_import_selfguard_does_not_import_prometheus_client():
    """`import selfguard` leaves prometheus_client unimported: it is an optional dependency."""
    code = "import sys, selfguard; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "False" == done.stdout.strip(), done.stderr
