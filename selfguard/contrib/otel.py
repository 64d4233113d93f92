"""Report selfguard.stats() through the OpenTelemetry metrics API as observable counters (needs selfguard[otel])."""

from __future__ import annotations

import importlib.util
import threading
import warnings
import weakref
from typing import Callable, Iterable, Optional

from .. import stats
from .._version import __version__
from . import missing_extra

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        MeterProvider,
        NoOpMeterProvider,
        ObservableCounter,
        Observation,
        get_meter_provider,
    )
except ImportError as exc:  # without the extra: say which one to install
    raise missing_extra("otel", "otel", exc) from exc

__all__ = ["DESCRIPTIONS", "register", "unregister"]

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
# Providers whose instruments were unregistered: the OpenTelemetry API cannot
# delete an instrument, so its callbacks go quiet instead.
_quiet: weakref.WeakSet[MeterProvider] = weakref.WeakSet()
_warned_no_sdk = False


def _observe(provider: MeterProvider, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    reference = weakref.ref(provider)

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        if reference() in _quiet:
            return []
        return [Observation(stats().get(key, 0))]

    return callback


def _warn_without_sdk(provider: MeterProvider) -> None:
    """Say once when nothing will ever collect: the API alone exports nothing."""
    global _warned_no_sdk
    if _warned_no_sdk:
        return
    if isinstance(provider, NoOpMeterProvider) or importlib.util.find_spec("opentelemetry.sdk") is None:
        _warned_no_sdk = True
        warnings.warn(
            "selfguard.contrib.otel: no OpenTelemetry SDK meter provider, so these counters are never exported; "
            "install opentelemetry-sdk and an exporter, and set a MeterProvider",
            RuntimeWarning,
            stacklevel=3,
        )


def register(meter_provider: Optional[MeterProvider] = None) -> dict[str, ObservableCounter]:
    """Create selfguard's observable counters on *meter_provider* (default: the global one); return them by stats() key.

    The instruments are selfguard.checked, selfguard.self_connects,
    selfguard.retries, selfguard.gave_up, selfguard.relented,
    selfguard.addrnotavail and selfguard.faults (unit "1", meter "selfguard"),
    each read from selfguard.stats() when the SDK collects. Calling it again
    for the same provider returns the instruments already created there. With
    the default, the API's proxy provider forwards them to the SDK provider
    set later with set_meter_provider(). Warns once (RuntimeWarning) when no
    SDK is there to collect them: the API alone exports nothing.
    """
    provider = get_meter_provider() if meter_provider is None else meter_provider
    _warn_without_sdk(provider)
    with _lock:
        _quiet.discard(provider)
        instruments = _registered.get(provider)
        if instruments is None:
            meter = provider.get_meter("selfguard", __version__)
            instruments = {
                key: meter.create_observable_counter(
                    f"selfguard.{key}", callbacks=[_observe(provider, key)], unit="1", description=text
                )
                for key, text in DESCRIPTIONS.items()
            }
            _registered[provider] = instruments
        return instruments


def unregister(meter_provider: Optional[MeterProvider] = None) -> None:
    """Stop reporting to *meter_provider* (default: the global one); a later register() resumes.

    The OpenTelemetry API has no way to delete an instrument, so the
    instruments stay and observe nothing until register() is called again
    (depending on its version, the SDK drops them or repeats their last value).
    Unregistering a provider that was never registered does nothing.
    """
    provider = get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        if provider in _registered:
            _quiet.add(provider)
