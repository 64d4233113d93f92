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

uvloop binds and validates its own arguments: the wrapper only swaps the
protocol factory for the gate, wherever the caller put it, and reads the
port without judging it. The gate is also the factory uvloop is given for
every attempt; it calls the user's factory once, on the first, as uvloop
calls it once per create_connection.
"""

from __future__ import annotations

import ssl as _ssl

from . import _events
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
    """The protocol factory and protocol uvloop sees until the connection is known not to be a self-connect.

    It runs twice per create_connection (the factory call, connection_made),
    so it is written for speed: it has no __init__ (a Python frame), its
    state is set by the one who makes it, and the common case -- a kernel-picked port other than
    the one dialled -- hands the transport over inline.
    """

    __slots__ = ("action", "attempt", "call", "number", "protocol", "tls")

    action: Optional[Action]  # what the policy said of the last attempt; None: not a self-connect
    attempt: int
    call: tuple[Callable[[], Any], Any, Any]  # the caller's (factory, host, port): the positional call's own tuple
    number: int  # the dialled port as a number, 0 when it is not written as one
    protocol: Any  # the user's protocol, once the user's factory made it
    tls: bool

    @property
    def address(self) -> tuple[Any, Any]:
        """(host, port) as the caller gave them: made only for an event, a log line or an error."""
        return (self.call[1], self.call[2])

    def __call__(self) -> _Gate:
        # uvloop calls its factory first thing, once per create_connection: the
        # user's is called there on the first attempt (a factory that raises
        # makes create_connection raise, as without the guard), and its
        # protocol waits through the attempts a self-connect costs.
        if self.attempt:
            self.action = None
        else:
            self.protocol = self.call[0]()
            if self.protocol is None:
                # uvloop's own check of the protocol it is given (the gate, now):
                # made here, for the user's, it raises where and as uvloop does.
                raise TypeError("protocol is required")
        self.attempt += 1
        return self

    def connection_made(self, transport: Any) -> None:
        # uvloop read the transport's sockname when it connected: asking for
        # it costs no syscall. The socket is only needed to ask for the peer:
        # when the ports match, or the dialled port is not known.
        local = transport.get_extra_info("sockname")
        number = self.number
        if local is None or not number or local[1] == number:
            sock = transport.get_extra_info("socket")
            local = self_connected(sock, number, local)
            if local is not None:
                self.action = on_self_connect(sock, local, self.address, API, self.attempt, can_retry=True)
                if self.action is not Action.HAND_BACK:
                    transport.abort()  # reset in place already: no RST storm, no TIME_WAIT
                    return
        else:
            next(_events.checked)  # what self_connected() counts for a port that differs
        if self.tls:
            transport.pause_reading()  # start_tls takes it from here
            return
        protocol = self.protocol
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        pass  # only an aborted self-connect, which the user's protocol never saw

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused or handed over
        pass

    def eof_received(self) -> None:  # pragma: no cover - reading is paused or handed over
        pass


def _gate(call: tuple[Callable[[], Any], Any, Any], number: int, tls: bool) -> _Gate:
    """A new gate for one create_connection."""
    gate = _Gate()
    gate.call = call
    gate.number = number
    gate.tls = tls
    gate.attempt = 0
    gate.action = None
    return gate


def create_connection(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Guard uvloop's Loop.create_connection (and so asyncio.open_connection under uvloop).

    Passes through, untouched, whatever cannot self-connect or is not the
    guard's: a sock= given, a local_addr bound to an explicit port, no port,
    a port outside the ephemeral range. Not a coroutine itself: a
    passthrough returns uvloop's own coroutine, with no layer of ours around it.
    """
    if kwargs or len(args) != 3 or state.options is None:
        if state.options is None:
            return wrapped(*args, **kwargs)
        if kwargs:
            return _with_keywords(wrapped, instance, args, kwargs)
        return wrapped(*args)  # no port (or too many arguments): uvloop's to judge
    port = args[2]
    number = port if type(port) is int else _port_number(port)
    # The cached range first: in_range() is called only for a port outside it.
    if number and not (state.low <= number <= state.high or in_range(number)):
        return wrapped(*args)
    # number 0: a form getaddrinfo may read but the guard does not (" 40000",
    # 40000.0, "²"); the gate then judges by the ports the connection has.
    gate = _Gate()  # _gate(), inline: this is every guarded open_connection's path
    gate.call = args  # three items, as checked above
    gate.number = number
    gate.tls = False
    gate.attempt = 0
    gate.action = None
    return _gated(wrapped, gate, args[1], port)


def _with_keywords(wrapped: Callable[..., Any], loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """create_connection called with keywords: the same, once uvloop has bound the call the guard will make."""
    if kwargs.get("sock") is not None or port_of(kwargs.get("local_addr")):
        return wrapped(*args, **kwargs)
    # Read, not bound: an argument given twice or unknown makes uvloop raise
    # below, at call time as without the guard.
    factory: Any = args[0] if args else kwargs.get("protocol_factory")
    host = args[1] if len(args) > 1 else kwargs.get("host")
    port = args[2] if len(args) > 2 else kwargs.get("port")
    tls = bool(kwargs.get("ssl"))
    if port is None or (tls and not host and kwargs.get("server_hostname") is None):
        return wrapped(*args, **kwargs)  # nothing to dial the guard can check, or uvloop's ValueError
    number = _port_number(port)
    if number and not in_range(number):
        return wrapped(*args, **kwargs)
    gate = _gate((factory, host, port), number, tls)
    if args:
        args = (gate, *args[1:])
    kwargs = dict(kwargs)
    if "protocol_factory" in kwargs:
        kwargs["protocol_factory"] = gate
    # uvloop binds the arguments when its coroutine is made, and makes no
    # call before it runs: made and closed, it raises what the caller's call
    # would have raised, where it would have.
    wrapped(*args, **kwargs).close()
    tls_options = None
    if tls:
        tls_options = {name: kwargs.pop(name) for name in _TLS_OPTIONS if name in kwargs}
    return _through_gate(wrapped, loop, gate, args, kwargs, tls_options)


def _port_number(port: Any) -> int:
    """The port as a number when it is written as one (int, __index__, decimal text or bytes), else 0."""
    if type(port) is int:
        return port
    if isinstance(port, (str, bytes)):
        try:
            return int(port)
        except ValueError:
            return 0  # not a number int() reads ("http", "²"): getaddrinfo's to judge
    return port_of((None, port))


async def _gated(wrapped: Callable[..., Any], gate: _Gate, host: Any, port: Any) -> Any:
    """The positional call without TLS (asyncio.open_connection's): one attempt inline, the rest in _through_gate."""
    transport, _ = await wrapped(gate, host, port)
    if gate.action is None:
        return transport, gate.protocol
    return await _through_gate(wrapped, None, gate, (gate, host, port), {}, None, transport)


async def _through_gate(
    wrapped: Callable[..., Any],
    loop: Any,
    gate: _Gate,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tls: Optional[dict[str, Any]],
    transport: Any = None,
) -> Any:
    """Connect through the gate until the policy is satisfied; then TLS, if asked for.

    *transport*: the first attempt made already by _gated(), whose outcome is
    the gate's action.
    """
    while True:
        if transport is None:
            try:
                transport, _ = await wrapped(*args, **kwargs)
            except BaseException as exc:
                if gate.attempt > 1:
                    retried(API, gate.address, gate.attempt, True, exc)  # a retry ended it: its one log line
                raise
        action = gate.action
        if action is Action.REFUSE:
            raise SelfConnectError(gate.address, gate.attempt)
        if action is not Action.RETRY:
            if action is None and gate.attempt > 1:
                retried(API, gate.address, gate.attempt, True, 0)
            break
        retrying(API, gate.address, gate.attempt + 1, "self-connect")
        transport = None
    if not tls:
        return transport, gate.protocol
    return await _start_tls(loop, transport, gate.protocol, gate.address[0], tls)


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
