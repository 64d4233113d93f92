"""Expose selfguard.stats() to Prometheus as counters, read at scrape time (needs selfguard[prometheus])."""

from __future__ import annotations

import threading
import weakref
from typing import Iterator, Optional

from .. import stats
from . import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily
except ImportError as exc:  # without the extra: say which one to install
    raise missing_extra("prometheus", "prometheus", exc) from exc

__all__ = ["HELP", "SelfguardCollector", "register", "unregister"]

# stats() key -> help text. The metric is selfguard_<key>_total.
HELP = {
    "checked": "TCP connects to a port inside the ephemeral range that selfguard examined.",
    "self_connects": "TCP connects that connected the socket to itself.",
    "retries": "Connect attempts selfguard made again after a self-connect or a spurious EADDRNOTAVAIL.",
    "gave_up": "Connects that self-connected on every attempt (reported as connection refused).",
    "relented": "Connects handed back still connected to themselves (mode relent).",
    "addrnotavail": "Spurious EADDRNOTAVAIL errors seen on kernel-picked ports.",
    "faults": "Failures of selfguard's own machinery (it failed open).",
}


class SelfguardCollector:
    """A Prometheus collector that reads selfguard.stats() on every scrape.

    Nothing is counted twice and nothing is pushed: the guard's own counters
    are the source of truth, so a scrape always sees the current values.
    """

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Lets the registry detect name clashes at register() time without
        # running collect().
        for key, text in HELP.items():
            yield CounterMetricFamily(f"selfguard_{key}", text)

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = stats()
        for key, text in HELP.items():
            # CounterMetricFamily appends the _total suffix of the exposition.
            yield CounterMetricFamily(f"selfguard_{key}", text, value=counts.get(key, 0))


_lock = threading.Lock()
_registered: weakref.WeakKeyDictionary[CollectorRegistry, SelfguardCollector] = weakref.WeakKeyDictionary()


def register(registry: Optional[CollectorRegistry] = None) -> SelfguardCollector:
    """Register the selfguard collector with *registry* (default: prometheus_client.REGISTRY) and return it.

    Exposes selfguard_self_connects_total, selfguard_retries_total,
    selfguard_gave_up_total, selfguard_checked_total, selfguard_relented_total,
    selfguard_addrnotavail_total and selfguard_faults_total. Calling it again
    for the same registry returns the collector already registered there. The
    counters are per process: prometheus_client's multiprocess mode does not
    support custom collectors, so expose them from each worker.
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = SelfguardCollector()
            # Raises ValueError when someone else already exposes these names.
            registry.register(collector)
            _registered[registry] = collector
        return collector


def unregister(registry: Optional[CollectorRegistry] = None) -> None:
    """Remove the selfguard collector from *registry* (default: prometheus_client.REGISTRY), if it is there."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.pop(registry, None)
        if collector is not None:
            registry.unregister(collector)
