"""The stage before the codec (or the TLS handshake) when ``server.proxy_protocol`` is on.

Every new connection on such a listener first waits for its PROXY header:

1. a peer outside ``server.proxy_protocol_from`` is closed at once;
2. the header (v1 or v2, dsproxy/net/proxyproto.py) must be complete within
   ``server.header_timeout`` of the accept; a malformed one is refused as soon as
   the bytes show it, a missing or truncated one at the deadline or at the
   peer's close. Nothing is sent either way, and nothing reaches the upstream;
3. then the connection goes on, told the header's source address: that is the
   client's address from then on, in X-Forwarded-For, the access log, the metrics
   and the per-client limits. For ``UNKNOWN`` (v1) and ``LOCAL`` (v2) it is the
   socket's peer, as without a header.

Refusals (1 and 2) count as ``dsproxy_client_errors_total{kind="proxy_protocol"}``.
A peer that closes before sending a byte is not counted: load balancers' TCP
health checks do that.

While it waits, the stage is one of the generation's connections (a reload or a
shutdown waits for it as for a request head in progress; ``max_connections``
counts it), so nothing it holds outlives the server. ``HeaderWait`` is all of the
above; the two stages differ in how they read:

* ``ProxyPreamble`` (cleartext listeners) is the transport's protocol: it feeds
  what it reads to a ``ProxyHeaderParser``, then hands the transport to a
  ``ClientConnection`` (``set_protocol``, ``connection_made``, and the bytes read
  behind the header).
* ``SocketPreamble`` (TLS listeners, proxy/tlsfront.py) reads the accepted socket
  itself, before any transport exists, and takes exactly the header's bytes off
  it: each time the socket is readable it peeks at what is there
  (``MSG_PEEK``), and consumes only the bytes the parser says are header, so the
  ClientHello behind it stays in the kernel for the handshake. No task: a reader
  callback and a timer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from dsproxy.http.rules import is_trusted
from dsproxy.net.addr import normalise_ip
from dsproxy.net.proxyproto import (
    V2_MAX_BYTES,
    Parsed,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    parse_header,
)
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.shared import Shared

log = logging.getLogger("dsproxy.proxy.preamble")

ERROR_KIND = "proxy_protocol"

ClientAddress = tuple[str, int]


def client_address(header: ProxyHeader) -> ClientAddress | None:
    """The client's address a header gives; None: the socket's peer (UNKNOWN, LOCAL, ...)."""
    source = header.source
    return (source.host, source.port) if source is not None else None


class HeaderWait:
    """A connection waiting for its PROXY header: peer check, books, deadline, refusals.

    Subclasses read the bytes, and say how to close the connection (``_close``) and
    how many header bytes they hold (``_received``).
    """

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.peer = ""
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False  # counted in shared.connections, header not yet complete

    def _close(self) -> None:
        raise NotImplementedError

    def _received(self) -> int:
        raise NotImplementedError

    def _admit(self, peer: object) -> bool:
        """A new connection from ``peer`` (a socket address): False if it was closed."""
        shared = self.shared
        cfg = shared.config.server
        self.peer = normalise_ip(str(peer[0])) if isinstance(peer, tuple) and peer else ""
        if not is_trusted(self.peer, cfg.proxy_protocol_from):
            self._refuse("peer not in server.proxy_protocol_from")
            return False
        if len(shared.connections) >= cfg.max_connections:
            shared.observer.client_error("over_capacity")
            self._close()
            return False
        shared.connections.add(self)
        self._waiting = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(cfg.header_timeout, self._timed_out)
        return True

    # -- ServedConnection (reload and shutdown) -------------------------------------------
    def close_if_idle(self) -> bool:
        return False  # like a request head in progress: it has header_timeout to finish

    def abort(self) -> None:
        self._stop_waiting()  # a shutdown: not the peer's fault, not counted
        self._close()

    # -- outcomes -----------------------------------------------------------------------
    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting:
            missing = "truncated" if self._received() else "missing"
            self._refuse(f"{missing}: no complete header within server.header_timeout")

    def _gone(self, how: str) -> None:
        """The peer closed (or reset) while waiting: counted if it had started a header.

        A refusal closes the connection; otherwise closing is the caller's business.
        """
        if not self._waiting:
            return
        if self._received():
            self._refuse(f"truncated: {how} inside the header")
        else:
            self._stop_waiting()  # connected and closed: a health check, not an error

    def _refuse(self, why: str) -> None:
        self.shared.observer.client_error(ERROR_KIND)
        log.debug("PROXY protocol: closing the connection from %s (%s)", self.peer, why)
        self._stop_waiting()
        self._close()

    def _leave(self) -> None:
        """The header is complete: out of the books, so the next owner counts itself once.

        The caller then hands the connection over, and calls ``shared.connection_closed``
        (which tells a shutdown if that was the last one).
        """
        self._cancel_timer()
        self._waiting = False
        self.shared.connections.discard(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_waiting(self) -> None:
        self._cancel_timer()
        if self._waiting:
            self._waiting = False
            self.shared.connection_closed(self)


class ProxyPreamble(HeaderWait, asyncio.Protocol):
    """Reads one PROXY protocol header, then hands the connection to a ``ClientConnection``."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.transport: asyncio.Transport | None = None
        self.parser = ProxyHeaderParser()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._admit(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        if not self._waiting:
            return
        try:
            parsed = self.parser.feed(data)
        except ProxyHeaderError as exc:
            self._refuse(f"{exc.reason}: {exc}")
            return
        if parsed is not None:
            self._hand_over(parsed)

    def eof_received(self) -> bool | None:
        self._gone("the peer closed")
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone(f"the connection was lost ({exc!r})")  # (a no-op unless still waiting)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _received(self) -> int:
        return self.parser.received

    def _hand_over(self, parsed: Parsed) -> None:
        transport = self.transport
        assert transport is not None
        self._leave()
        conn = ClientConnection(self.shared, client_address(parsed.header))
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if parsed.rest and not transport.is_closing():
            conn.data_received(parsed.rest)
        self.shared.connection_closed(self)


class SocketPreamble(HeaderWait):
    """Takes exactly one PROXY header off an accepted socket, then calls ``then``.

    ``then(sock, client)`` gets the socket with every byte behind the header still
    unread, and owns it from then on; until then the preamble does, and closes it on
    every other outcome. ``start`` must be called on the running loop.
    """

    def __init__(
        self,
        shared: Shared,
        sock: socket.socket,
        peer: object,
        then: Callable[[socket.socket, ClientAddress | None], None],
    ) -> None:
        super().__init__(shared)
        self.sock: socket.socket | None = sock  # None once closed or handed over
        self.peer_address = peer
        self.then = then
        self._header = b""  # the header bytes consumed so far
        self._loop: asyncio.AbstractEventLoop | None = None  # set while the reader is on

    def start(self) -> None:
        sock = self.sock
        if sock is None or not self._admit(self.peer_address):
            return
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        """Reads until the socket has nothing more to say now (or the header is complete).

        Not one read per wake-up: uvloop calls a reader once after its socket gets an
        error (a reset), then stops polling it, so what is left must be read at once.
        """
        while (sock := self.sock) is not None:
            # Never more than a header can be: the parser decides within V2_MAX_BYTES.
            peeked = self._recv(sock, max(1, V2_MAX_BYTES - len(self._header)), socket.MSG_PEEK)
            if peeked is None:
                return
            try:
                parsed = parse_header(self._header + peeked)
            except ProxyHeaderError as exc:
                self._refuse(f"{exc.reason}: {exc}")
                return
            # Without a result every peeked byte is header; with one, only up to its end.
            wanted = len(peeked) if parsed is None else parsed.header.length - len(self._header)
            taken = self._recv(sock, wanted)
            if taken is None:
                return
            self._header += taken
            if parsed is not None and len(self._header) == parsed.header.length:
                self._hand_over(sock, parsed.header)
            # (else: more header to come, or fewer bytes came than were peeked: read on)

    def _recv(self, sock: socket.socket, size: int, flags: int = 0) -> bytes | None:
        """Up to ``size`` bytes; None if there are none now, or the peer is gone (closed)."""
        try:
            data = sock.recv(size, flags)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # reset by the peer: gone, as by a close
            how = f"the connection failed ({exc.strerror or exc})"
        else:
            if data:
                return data
            how = "the peer closed"
        self._gone(how)
        self._close()
        return None

    def _stop_reading(self) -> None:
        sock, loop = self.sock, self._loop
        if loop is not None and sock is not None:
            self._loop = None
            loop.remove_reader(sock.fileno())

    def _close(self) -> None:
        self._stop_reading()
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def _received(self) -> int:
        return len(self._header)

    def _hand_over(self, sock: socket.socket, header: ProxyHeader) -> None:
        self._stop_reading()
        self.sock = None  # then's from now on
        self._leave()
        self.then(sock, client_address(header))
        self.shared.connection_closed(self)
