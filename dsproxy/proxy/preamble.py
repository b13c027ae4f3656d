"""The stage before the codec when ``server.proxy_protocol`` is on: the PROXY header.

Every new connection on such a listener starts with a ``ProxyPreamble``:

1. a peer outside ``server.proxy_protocol_from`` is closed at once;
2. the header (v1 or v2, dsproxy/net/proxyproto.py) must be complete within
   ``server.header_timeout`` of the accept; a malformed one is refused as soon as
   the bytes show it, a missing or truncated one at the deadline or at the
   peer's close. Nothing is sent either way, and nothing reaches the upstream;
3. then the transport is handed to a ``ClientConnection`` (``set_protocol``,
   ``connection_made``, and the bytes read behind the header), told the
   header's source address: that is the client's address from then on, in
   X-Forwarded-For, the access log, the metrics and the per-client limits. For
   ``UNKNOWN`` (v1) and ``LOCAL`` (v2) it is the socket's peer, as without a header.

Refusals (1 and 2) count as ``dsproxy_client_errors_total{kind="proxy_protocol"}``.
A peer that closes before sending a byte is not counted: load balancers' TCP
health checks do that.

While it waits, the preamble is one of the generation's connections (a reload or
a shutdown waits for it as for a request head in progress; ``max_connections``
counts it), so nothing it holds outlives the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from dsproxy.http.rules import is_trusted
from dsproxy.net.addr import normalise_ip
from dsproxy.net.proxyproto import Parsed, ProxyHeaderError, ProxyHeaderParser
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.shared import Shared

log = logging.getLogger("dsproxy.proxy.preamble")

ERROR_KIND = "proxy_protocol"


class ProxyPreamble(asyncio.Protocol):
    """Reads one PROXY protocol header, then hands the connection to a ``ClientConnection``."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.parser = ProxyHeaderParser()
        self.peer = ""
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False  # counted in shared.connections, header not yet complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        shared = self.shared
        cfg = shared.config.server
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = normalise_ip(str(peer[0]))
        if not is_trusted(self.peer, cfg.proxy_protocol_from):
            self._refuse("peer not in server.proxy_protocol_from")
            return
        if len(shared.connections) >= cfg.max_connections:
            shared.observer.client_error("over_capacity")
            transport.abort()
            return
        shared.connections.add(self)
        self._waiting = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(cfg.header_timeout, self._timed_out)

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
        if self._waiting:
            if self.parser.received:
                self._refuse("truncated: the peer closed inside the header")
            else:
                self._stop_waiting()  # connected and closed: a health check, not an error
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()

    # -- ServedConnection (reload and shutdown) -------------------------------------------
    def close_if_idle(self) -> bool:
        return False  # like a request head in progress: it has header_timeout to finish

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- outcomes -----------------------------------------------------------------------
    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting:
            missing = "truncated" if self.parser.received else "missing"
            self._refuse(f"{missing}: no complete header within server.header_timeout")

    def _refuse(self, why: str) -> None:
        self.shared.observer.client_error(ERROR_KIND)
        log.debug("PROXY protocol: closing the connection from %s (%s)", self.peer, why)
        self._stop_waiting()
        if self.transport is not None:
            self.transport.abort()

    def _hand_over(self, parsed: Parsed) -> None:
        self._cancel_timer()
        shared = self.shared
        transport = self.transport
        assert transport is not None
        # Out of the books first, so the connection's own capacity check counts it once.
        self._waiting = False
        shared.connections.discard(self)
        source = parsed.header.source
        client = (source.host, source.port) if source is not None else None
        conn = ClientConnection(shared, client)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if parsed.rest and not transport.is_closing():
            conn.data_received(parsed.rest)
        shared.connection_closed(self)  # tells a shutdown if that was the last one

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_waiting(self) -> None:
        self._cancel_timer()
        if self._waiting:
            self._waiting = False
            self.shared.connection_closed(self)
