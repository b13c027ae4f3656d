"""The HTTP/1.1 client side: one asyncio.Protocol per client connection.

A connection owns its transport, its codec, its deadlines and its exchanges:
one at a time (pipelined requests wait in the codec until the response
before them is complete, so responses stay in order). States:

    IDLE      waiting for a request head (keep-alive idle, or head in progress)
    ACTIVE    an exchange is in flight: its body streams up, the response down
    SWITCHED  after a 101: a Tunnel took both transports over
    CLOSED

Timeouts are deadlines checked by one timer per connection: activity only
stamps ``loop.time()``; the timer re-arms itself for the nearest deadline
(its own while IDLE, the exchange's while ACTIVE), so the hot path never
reschedules timers per chunk.

Backpressure: reading from the client is paused for any of the reasons
``PAUSE_*`` and resumed when none is left; when the client's write buffer is
full the exchange stops reading its upstream (pause_writing/resume_writing).
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

import dsproxy.http.codec.wire as wire
from dsproxy.errors import ClientError, ProxyError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead, ServerCodec
from dsproxy.http.rules import (
    ClientContext,
    build_client_response,
    build_switch_response,
    client_context,
    error_response,
)
from dsproxy.net.addr import Family, family_of, normalise_ip
from dsproxy.observe.records import Observer
from dsproxy.proxy.exchange import Exchange
from dsproxy.proxy.flow import DeadlineTimer, ReadGate
from dsproxy.proxy.limits import ClientLimits
from dsproxy.proxy.recording import tunnel_record
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.tunnel import Tunnel
from dsproxy.proxy.upstream import WRITE_HIGH_WATER_BYTES, UpstreamConnection

IDLE: Final = 0
ACTIVE: Final = 1
SWITCHED: Final = 2
CLOSED: Final = 3

# Why reading from the client is paused (bits; reading resumes when none is left).
PAUSE_UPSTREAM_FULL: Final = 1  # the upstream's write buffer is full
PAUSE_PIPELINED: Final = 2  # bytes behind a complete request, while its response is due
PAUSE_PENDING_BODY: Final = 4  # body bytes held while the upstream connection opens
PAUSE_ALL: Final = PAUSE_UPSTREAM_FULL | PAUSE_PIPELINED | PAUSE_PENDING_BODY

# A head and a body piece up to this size are joined into one bytes object to write;
# bigger pieces go to writelines as they are.
JOIN_MAX_BYTES = 16 * 1024
# Stands for the request in the record of a request refused before its head was parsed.
UNPARSED_REQUEST = RequestHead(b"-", b"-", b"1.1", [], False, None, False, None, False)


class ClientConnection(asyncio.Protocol):
    def __init__(self, shared: Shared, client: tuple[str, int] | None = None) -> None:
        """``client``: the client's address when not the socket's peer (a PROXY header's)."""
        self.shared = shared
        self._client_address = client
        cfg = shared.config.server
        self.header_timeout = cfg.header_timeout
        self.body_timeout = cfg.body_timeout
        self.keepalive_timeout = cfg.keepalive_timeout
        self.max_body_bytes = cfg.max_body_bytes
        self.observer: Observer = shared.observer
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        self.transport: asyncio.Transport | None = None
        self.codec: ServerCodec = shared.codec.server(self, max_header_bytes=cfg.max_header_bytes)
        self.state = IDLE
        self.client_ip = ""
        self.client_port = 0
        self.family: Family = "ipv4"
        self.ctx = ClientContext("", b"0", False)
        self.exchange: Exchange | None = None
        self.client_key = ""  # counted in the per-client limits under this key ("": not)
        self._limits: ClientLimits | None = None
        self.tunnel: Tunnel | None = None
        self.counted = False
        self.close_after = False  # close once the response in flight is complete
        # Response bytes produced while handling one upstream read; written with
        # one transport call when that read is done (flush), not one per event.
        self._out: list[bytes] = []
        self._response_chunked = False
        # Deadline bookkeeping (loop.time() stamps).
        self._timer = DeadlineTimer(self.loop, self._on_timer)
        self.arm = self._timer.arm  # ExchangeHost.arm: exchanges share the one timer
        self._idle_since = 0.0
        self._head_started = 0.0  # 0 while no byte of the next head has arrived
        self._reading = ReadGate()  # paused for PAUSE_* reasons

    # ================================================================ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        shared = self.shared
        if len(shared.connections) >= shared.config.server.max_connections:
            self._turn_away(transport, "over_capacity")
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        self._reading.transport = transport
        peer = self._client_address or transport.get_extra_info("peername") or ("", 0)
        self.client_ip = normalise_ip(str(peer[0]))
        self.client_port = int(peer[1]) if len(peer) > 1 else 0
        self.family = family_of(self.client_ip)
        limits = shared.limits
        if limits.active:
            key = limits.key(self.client_ip)
            if not limits.connection_opened(key):  # over server.max_connections_per_ip
                self._turn_away(transport, "too_many_connections")
                return
            self.client_key = key
            self._limits = limits
        sock = transport.get_extra_info("sockname") or ("", 0)
        self.ctx = client_context(
            self.client_ip,
            str(sock[0]),
            int(sock[1]) if len(sock) > 1 else 0,
            shared.config.server,
            # A TLS listener hands over its TLS transport (proxy/tlsfront.py).
            tls=transport.get_extra_info("ssl_object") is not None,
        )
        shared.connections.add(self)
        self.counted = True
        self.observer.connection_opened(self.family)
        now = self.loop.time()
        self._idle_since = now
        self._head_started = now  # the first head is due header_timeout after accept
        self.arm(now + self.header_timeout)

    def _turn_away(self, transport: asyncio.Transport, kind: str) -> None:
        """Close a new connection at once, counted; the ones already served keep working."""
        self.observer.client_error(kind)
        self.state = CLOSED
        transport.abort()

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        arm_head = False
        exchange = self.exchange
        if exchange is None:
            if not self._head_started:
                self._head_started = now
                arm_head = True
        else:
            exchange.client_activity = now
            if exchange.request_done:
                # Pipelined bytes while a response is in flight: the codec keeps
                # them; stop reading so a client cannot make us buffer without bound.
                self._reading.pause(PAUSE_PIPELINED)
        try:
            self.codec.feed(data)
        except ClientError as exc:
            self._refuse(exc)
            return
        if arm_head and self.state == IDLE and self._head_started:
            # The head spans reads: it is due header_timeout after its first byte.
            # (A head that arrived whole, the usual case, costs no timer call.)
            self.arm(now + self.header_timeout)

    def eof_received(self) -> bool | None:
        clean = self.codec.feed_eof()
        exchange = self.exchange
        if exchange is not None:
            if exchange.request_done:
                # Half-close after a complete request: finish the response, then close.
                self.close_after = True
                return True
            if not clean:
                exchange.abort("client closed mid-request")
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.client_gone("client connection lost")
        self._closed()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_pause_writing()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_resume_writing()

    # ================================================ codec events: the request
    def on_request_head(self, head: RequestHead) -> None:
        now = self.loop.time()
        self.state = ACTIVE
        self._head_started = 0.0
        shared = self.shared
        # After a reload: the new configuration's routes and pools (see Shared.successor).
        router = shared.newest().router if shared.draining else shared.router
        route = router.only
        if route is None:
            try:
                route = router.route(head.target)
            except ClientError as exc:  # a path that climbs above "/"
                self.exchange = Exchange(self, router.default, head, now)
                self.exchange.refuse(exc)
                return
        exchange = self.exchange = Exchange(self, route, head, now)
        limits = self._limits
        if limits is not None and limits.rate and not limits.allow_request(self.client_key, now):
            exchange.refuse(ClientError("request rate over server.rate_limit", status=429,
                                        kind="rate_limited"))  # fmt: skip
            return
        exchange.start(self.max_body_bytes)

    def on_request_body(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.request_body(data, self.max_body_bytes)

    def on_request_end(self, trailers: Headers) -> None:
        if self.exchange is not None:
            self.exchange.request_end(trailers)

    # ===================================================== ExchangeHost: timing
    @property
    def reading_paused(self) -> bool:
        return self._reading.reasons != 0

    def pause_request(self) -> None:
        exchange = self.exchange
        # Full upstream buffer, or a body held while connecting: either way stop reading.
        if exchange is not None and exchange.upstream is None:
            self._reading.pause(PAUSE_PENDING_BODY)
        else:
            self._reading.pause(PAUSE_UPSTREAM_FULL)

    def resume_request(self) -> None:
        self._reading.resume(PAUSE_UPSTREAM_FULL | PAUSE_PENDING_BODY)

    # =================================================== ExchangeHost: responses
    def send_informational(self, status: int, reason: bytes, request: RequestHead) -> None:
        if request.version == b"1.1":  # RFC 9110 §15.2: 1xx only to HTTP/1.1 clients
            self._out.append(self.codec.encode_informational(status, reason, []))

    def send_response_head(self, head: ResponseHead, exchange: Exchange) -> None:
        close = self.shared.draining or self.close_after or not exchange.request_done
        out = build_client_response(head, exchange.head, close=close)
        self.close_after = out.close
        self._response_chunked = out.chunked
        self._out.append(
            self.codec.encode_response_head(
                head.status, head.reason, out.headers, chunked=out.chunked
            )
        )

    def send_body(self, data: bytes) -> None:
        self._out += self.codec.encode_body(data)

    def send_end(self, trailers: Headers) -> None:
        self._out.append(self.codec.encode_end(trailers if self._response_chunked else []))

    def flush(self) -> None:
        """Write what the last upstream read produced, in one call."""
        out = self._out
        if out:
            self._out = []
            transport = self.transport
            if transport is not None and self.state != CLOSED:
                if len(out) == 1:
                    transport.write(out[0])
                elif len(out) == 2 and len(out[1]) <= JOIN_MAX_BYTES:
                    transport.write(out[0] + out[1])  # a head and a small body: one send
                else:
                    transport.writelines(out)  # one writev; body pieces are not copied

    def send_error(self, error: ProxyError, request: RequestHead) -> int:
        """A short plain-text error, then close (written raw: the codec is done)."""
        self._out = []  # an interim 1xx at most: the error replaces it
        reason, headers, body = error_response(error.status)
        data = wire.status_head(error.status, reason, headers)
        if request.method != b"HEAD":
            data += body
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(data)
        self._shutdown()
        return len(body)

    def abort_client(self) -> None:
        self.exchange = None
        self.state = CLOSED
        self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def exchange_done(self, exchange: Exchange) -> None:
        """The response is complete: write what is left of it, then the next cycle or close."""
        self.flush()
        self.exchange = None
        close = self.close_after or self.shared.draining or not exchange.request_done
        transport = self.transport
        if close or transport is None:
            self._shutdown()
            return
        self.state = IDLE
        now = self.loop.time()
        self._idle_since = now
        self._head_started = 0.0
        self.arm(now + self.keepalive_timeout)
        self._reading.resume(PAUSE_ALL)
        try:
            self.codec.start_next_cycle()
        except ClientError as exc:
            self._refuse(exc)

    def switch_protocols(
        self, exchange: Exchange, conn: UpstreamConnection, head: ResponseHead
    ) -> None:
        """Relay the 101, then hand both transports to a tunnel."""
        transport = self.transport
        up_transport = conn.transport
        if transport is None or up_transport is None:
            return
        self.exchange = None
        self.flush()
        transport.write(
            self.codec.encode_informational(101, head.reason, build_switch_response(head))
        )
        from_client = self.codec.switch_protocols()
        from_upstream = conn.codec.switch_protocols()
        self._timer.cancel()
        self._reading.resume(PAUSE_ALL)
        self.state = SWITCHED
        tunnel = Tunnel(
            transport,
            up_transport,
            idle_timeout=exchange.route.websocket_idle_timeout,
            record=tunnel_record(exchange, conn),
            on_close=self._tunnel_closed,
        )
        self.tunnel = tunnel
        self.observer.websocket_opened()
        tunnel.start(from_upstream, from_client)

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        self.observer.websocket_closed(tunnel.record)
        self._closed()

    # ================================================================== ending
    def _refuse(self, exc: ClientError) -> None:
        """The client sent something we refuse: answer with its status (or abort) and close."""
        exchange = self.exchange
        if exchange is None:
            # No request head yet: the record stands for an unparsed request.
            router = self.shared.router
            exchange = Exchange(self, router.default, UNPARSED_REQUEST, self.loop.time())
        exchange.refuse(exc)

    def _shutdown(self) -> None:
        self.exchange = None
        self.state = CLOSED
        self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def _closed(self) -> None:
        self.state = CLOSED
        self._timer.cancel()
        if self.client_key:
            self.shared.limits.connection_closed(self.client_key)
            self.client_key = ""
        if self.counted:
            self.counted = False
            self.shared.connection_closed(self)
            self.observer.connection_closed(self.family)

    def close_if_idle(self) -> bool:
        """Graceful shutdown: close now when no request is in flight."""
        if self.state == IDLE and not self._head_started and self.transport is not None:
            self._shutdown()
            return True
        if self.state == ACTIVE:
            self.close_after = True
        return False

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.abort("shutdown")
        elif self.transport is not None:
            self.transport.abort()

    # ================================================================= timers
    def _on_timer(self) -> None:
        now = self.loop.time()
        if self.state == IDLE:
            nxt = self._idle_deadline(now)
        elif self.state == ACTIVE and self.exchange is not None:
            nxt = self.exchange.next_deadline(now)
        else:
            return
        if nxt is not None:
            self.arm(nxt)

    def _idle_deadline(self, now: float) -> float | None:
        """Between requests: the head deadline, or the keep-alive one."""
        if self._head_started:
            due = self._head_started + self.header_timeout
            if now < due:
                return due
            self.observer.client_error("header_timeout")
            if self.codec.head_in_progress:
                error = ClientError("request head timed out", status=408, kind="header_timeout")
                self.send_error(error, UNPARSED_REQUEST)
            else:
                self._shutdown()  # no byte of a next request: just close
            return None
        due = self._idle_since + self.keepalive_timeout
        if now >= due:
            self._shutdown()
            return None
        return due
