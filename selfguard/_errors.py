"""The exception raised when every connect attempt met the socket itself."""

from __future__ import annotations

import errno

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SelfConnectError(ConnectionRefusedError):
    """Every attempt to connect to *address* connected the socket to itself.

    It is a :class:`ConnectionRefusedError` with ``errno.ECONNREFUSED``: a
    self-connect only happens when nothing listens at *address*, so "connection
    refused" is the truthful answer, and callers that already retry on refused
    connections need no change.
    """

    def __init__(self, address: Any, attempts: int) -> None:
        self.address = address
        self.attempts = attempts
        super().__init__(
            errno.ECONNREFUSED,
            f"Connection refused: nothing listens at {format_address(address)}; "
            f"the socket connected to itself on {_attempts(attempts)}",
        )

    # OSError pickles as (errno, strerror), which would lose address and
    # attempts and call __init__ with the wrong arguments in the receiving
    # process (multiprocessing, concurrent.futures). The instance dict goes
    # along, as BaseException's own __reduce__ sends it: __notes__ and the
    # attributes a caller set survive the trip.
    def __reduce__(self) -> tuple[type[SelfConnectError], tuple[Any, int], dict[str, Any]]:
        return type(self), (self.address, self.attempts), self.__dict__


def _attempts(n: int) -> str:
    return "its only attempt" if n == 1 else f"all {n} attempts"


def format_address(address: Any) -> str:
    """host:port, or [host]:port for IPv6."""
    # tuple's own methods: a tuple subclass's overrides are not run (the stdlib does not run them either).
    if isinstance(address, tuple) and tuple.__len__(address) >= 2:
        host, port = str(tuple.__getitem__(address, 0)), tuple.__getitem__(address, 1)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return repr(address)
