"""uvloop: create_connection connects in libuv, out of Python's sight; the guard checks the transport first.

uvloop dials in C, so no socket method of Python's is called. What Python
does see is the protocol: uvloop calls connection_made(transport) before
create_connection returns. The guard puts a gate in front of the user's
protocol: the gate checks the transport's socket and asks the policy. A
self-connected transport is reset in place and aborted, and the connect is
made again; only a transport that is not connected to itself is handed to
the user's protocol (set_protocol, then connection_made), so the protocol
never sees a self-connected one. With ssl=, the handshake would run against
the socket itself, so the TCP connection is made and checked first and TLS
started on it after (loop.start_tls), as create_connection would have.
"""

from __future__ import annotations

import functools
import ssl as _ssl

from ._detect import port_of, self_connected
from ._errors import SelfConnectError
from ._policy import Action, on_self_connect, retried, retrying
from ._state import in_range, state

# Not `from typing import ...`: typing costs ~2.5 ms to import where wrapt 1.x has not
# imported it already, and every annotation here is a string (PEP 563) never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

API = "loop.create_connection"
_TLS_OPTIONS = ("ssl", "server_hostname", "ssl_handshake_timeout", "ssl_shutdown_timeout")


class _Gate:
    """The protocol uvloop sees until the connection is known not to be a self-connect."""

    def __init__(self, factory: Callable[[], Any], port: int, address: Any, attempt: int, tls: bool) -> None:
        # Made now, as uvloop makes it before it connects: a factory that
        # raises makes create_connection raise, as without the guard.
        self.protocol = factory()
        self.port, self.address, self.attempt, self.tls = port, address, attempt, tls
        self.action: Optional[Action] = None

    def connection_made(self, transport: Any) -> None:
        # The transport's sockname costs a quarter of its socket's
        # getsockname() under uvloop; the socket is only needed to ask for
        # the peer: when the ports match, or the dialled port is not known.
        local = transport.get_extra_info("sockname")
        maybe_self = local is None or not self.port or local[1] == self.port
        sock = transport.get_extra_info("socket") if maybe_self else None
        local = self_connected(sock, self.port, local)
        if local is not None:
            self.action = on_self_connect(sock, local, self.address, API, self.attempt, can_retry=True)
            if self.action is not Action.HAND_BACK:
                transport.abort()  # reset in place already: no RST storm, no TIME_WAIT
                return
        if self.tls:
            transport.pause_reading()  # start_tls takes it from here
            return
        transport.set_protocol(self.protocol)
        self.protocol.connection_made(transport)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        pass  # only an aborted self-connect, which the user's protocol never saw

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused or handed over
        pass

    def eof_received(self) -> None:  # pragma: no cover - reading is paused or handed over
        pass


def _open_gate(into: list[_Gate], *args: Any) -> _Gate:
    """The protocol factory uvloop is given: a gate, kept where the wrapper can see what it found."""
    into.append(_Gate(*args))
    return into[-1]


def create_connection(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Guard uvloop's Loop.create_connection (and so asyncio.open_connection under uvloop).

    Passes through, untouched, whatever cannot self-connect or is not the
    guard's: a sock= given, a local_addr bound to an explicit port, a port
    outside the ephemeral range, arguments the real method will reject. Not
    a coroutine itself: a passthrough returns uvloop's own coroutine, with no
    layer of ours around it.
    """
    if state.options is None or len(args) > 3:
        return wrapped(*args, **kwargs)
    factory, host, port = (*args, None, None, None)[:3]
    if kwargs:
        factory = kwargs.get("protocol_factory", factory)
        host = kwargs.get("host", host)
        port = kwargs.get("port", port)
        local_addr = kwargs.get("local_addr")
        if kwargs.get("sock") is not None or (local_addr is not None and port_of(local_addr)):
            return wrapped(*args, **kwargs)
    if factory is None or host is None or port is None:
        return wrapped(*args, **kwargs)
    number = _port_number(port)
    if number and not in_range(number):
        return wrapped(*args, **kwargs)
    # number 0: a form getaddrinfo reads but the guard does not (" 40000",
    # 40000.0); the gate then judges by the ports the connection has.
    tls, rest = {}, {}
    if kwargs:
        tls = {name: kwargs[name] for name in _TLS_OPTIONS if name in kwargs}
        rest = {k: v for k, v in kwargs.items() if k not in ("protocol_factory", "host", "port", *_TLS_OPTIONS)}
        if not tls.get("ssl"):
            rest.update(tls)  # ssl=None/False with its options: the real method judges them
            tls = {}
    return _through_gates(wrapped, instance, factory, host, port, number, rest, tls)


def _port_number(port: Any) -> int:
    """The port as a number when it is written as one (int, __index__, decimal text or bytes), else 0."""
    if isinstance(port, (str, bytes)):
        return int(port) if port.isdigit() else 0
    return port_of((None, port))


async def _through_gates(
    wrapped: Callable[..., Any],
    loop: Any,
    factory: Callable[[], Any],
    host: Any,
    port: Any,
    number: int,
    rest: dict[str, Any],
    tls: dict[str, Any],
) -> Any:
    """Connect through a gate until the policy is satisfied; then TLS, if asked for."""
    address = (host, port)
    attempt = 1
    while True:
        gates: list[_Gate] = []
        opener = functools.partial(_open_gate, gates, factory, number, address, attempt, bool(tls))
        if attempt == 1:
            transport, _ = await wrapped(opener, host, port, **rest)
        else:
            try:
                transport, _ = await wrapped(opener, host, port, **rest)
            except BaseException as exc:
                retried(API, address, attempt, True, exc)
                raise
        action = gates[-1].action
        if action is Action.REFUSE:
            raise SelfConnectError(address, attempt)
        if action is not Action.RETRY:
            if action is None and attempt > 1:
                retried(API, address, attempt, True, 0)
            break
        attempt += 1
        retrying(API, address, attempt, "self-connect")
    protocol = gates[-1].protocol
    if not tls:
        return transport, protocol
    return await _start_tls(loop, transport, protocol, host, tls)


async def _start_tls(loop: Any, transport: Any, protocol: Any, host: Any, tls: dict[str, Any]) -> Any:
    """TLS on the checked connection, with what create_connection(ssl=...) would have used."""
    context = tls["ssl"]
    server_hostname = tls.get("server_hostname")
    if server_hostname is None:
        server_hostname = host
    if context is True:
        context = _ssl.create_default_context()
        if not server_hostname:
            context.check_hostname = False
    options = {name: tls[name] for name in ("ssl_handshake_timeout", "ssl_shutdown_timeout") if name in tls}
    try:
        tls_transport = await loop.start_tls(transport, protocol, context, server_hostname=server_hostname, **options)
    except BaseException:
        transport.close()
        raise
    # start_tls() leaves connection_made to the caller; create_connection(ssl=) calls it.
    protocol.connection_made(tls_transport)
    return tls_transport, protocol
