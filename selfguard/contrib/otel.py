"""Report selfguard.stats() through the OpenTelemetry metrics API as observable counters (needs selfguard[otel])."""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Iterable, Optional

from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    ObservableCounter,
    Observation,
    get_meter_provider,
)

from .. import stats
from .._version import __version__

__all__ = ["DESCRIPTIONS", "register"]

# stats() key -> description. The instrument is selfguard.<key>, unit "1".
DESCRIPTIONS = {
    "checked": "TCP connects to a port inside the ephemeral range that selfguard examined",
    "self_connects": "TCP connects that connected the socket to itself",
    "retries": "Connect attempts selfguard made again after a self-connect or a spurious EADDRNOTAVAIL",
    "gave_up": "Connects that self-connected on every attempt (reported as connection refused)",
    "relented": "Connects handed back still connected to themselves (mode relent)",
    "addrnotavail": "Spurious EADDRNOTAVAIL errors seen on kernel-picked ports",
    "faults": "Failures of selfguard's own machinery (it failed open)",
}

_lock = threading.Lock()
_registered: weakref.WeakKeyDictionary[MeterProvider, dict[str, ObservableCounter]] = weakref.WeakKeyDictionary()


def _observe(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(stats().get(key, 0))]

    return callback


def register(meter_provider: Optional[MeterProvider] = None) -> dict[str, ObservableCounter]:
    """Create selfguard's observable counters on *meter_provider* (default: the global one); return them by stats() key.

    The instruments are selfguard.checked, selfguard.self_connects,
    selfguard.retries, selfguard.gave_up, selfguard.relented,
    selfguard.addrnotavail and selfguard.faults (unit "1", meter "selfguard"),
    each read from selfguard.stats() when the SDK collects. Calling it again
    for the same provider returns the instruments already created there. With
    the default, the API's proxy provider forwards them to the SDK provider
    set later with set_meter_provider().
    """
    provider = get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        instruments = _registered.get(provider)
        if instruments is None:
            meter = provider.get_meter("selfguard", __version__)
            instruments = {
                key: meter.create_observable_counter(
                    f"selfguard.{key}", callbacks=[_observe(key)], unit="1", description=text
                )
                for key, text in DESCRIPTIONS.items()
            }
            _registered[provider] = instruments
        return instruments
