"""The client side: one asyncio.Protocol per client connection.

States (one request in flight at a time; pipelined requests wait in the codec):

    IDLE      waiting for a request head (keep-alive idle, or head in progress)
    ACTIVE    a request is in flight: its body streams up, the response down
    TUNNEL    after a 101: a Tunnel owns both sockets
    CLOSED

Timeouts are deadlines checked by one timer per connection: activity only
stamps ``loop.time()``; the timer re-arms itself for the nearest deadline, so
the hot path never reschedules timers per chunk.

Backpressure: when the upstream's write buffer is full we pause reading the
client, and when the client's write buffer is full we pause reading the
upstream (the pair of pause_writing/resume_writing callbacks below).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import cast

from dsproxy.config import Config
from dsproxy.errors import ClientError, ProxyError, UpstreamError
from dsproxy.http.codec import wire
from dsproxy.http.codec.base import CodecFactory, Headers, RequestHead, ResponseHead, ServerCodec
from dsproxy.http.rules import (
    IDEMPOTENT_METHODS,
    ClientContext,
    UpstreamRequest,
    build_client_response,
    build_switch_response,
    build_upstream_request,
    error_response,
    is_trusted,
)
from dsproxy.net.addr import Family, family_of, normalise_ip
from dsproxy.observe.records import Observer, RequestRecord, TunnelRecord
from dsproxy.proxy.tunnel import Tunnel
from dsproxy.proxy.upstream import WRITE_HIGH_WATER_BYTES, UpstreamConnection, UpstreamPool

log = logging.getLogger("dsproxy.proxy.connection")

IDLE, ACTIVE, TUNNEL, CLOSED = range(4)
# Request body bytes held while the upstream connection is being opened.
PENDING_BODY_HIGH_WATER_BYTES = 256 * 1024
# A head and a body piece up to this size are joined into one bytes object to write;
# bigger pieces go to writelines as they are.
JOIN_MAX_BYTES = 16 * 1024
# Status logged when the client went away before its response was complete (nginx's 499).
CLIENT_CLOSED_STATUS = 499


@dataclass(slots=True)
class Shared:
    """What every client connection of one worker shares."""

    config: Config
    codec: CodecFactory
    pool: UpstreamPool
    observer: Observer
    connections: set[DownstreamProtocol] = field(default_factory=set)
    tunnels: set[Tunnel] = field(default_factory=set)
    draining: bool = False
    # Set by shutdown; fired when the last connection closes.
    all_closed: asyncio.Event | None = None


class DownstreamProtocol(asyncio.Protocol):
    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        cfg = shared.config.server
        self.header_timeout = cfg.header_timeout
        self.body_timeout = cfg.body_timeout
        self.keepalive_timeout = cfg.keepalive_timeout
        self.max_body_bytes = cfg.max_body_bytes
        self.read_timeout = shared.config.upstream.read_timeout
        self.send_timeout = shared.config.upstream.send_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.codec: ServerCodec = shared.codec.server(self, max_header_bytes=cfg.max_header_bytes)
        self.state = IDLE
        self.client_ip = ""
        self.client_port = 0
        self.family: Family = "ipv4"
        self.ctx: ClientContext | None = None
        self.tunnel: Tunnel | None = None
        self.counted = False
        # Response bytes produced while handling one upstream read; written with
        # one transport call when that read is done (flush), not one per event.
        self._out: list[bytes] = []
        # Deadline bookkeeping (loop.time() stamps).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_since = 0.0
        self._head_started = 0.0  # 0 while no byte of the next head has arrived
        self._first_request = True
        self._client_activity = 0.0
        self._upstream_activity = 0.0
        self._upstream_write_paused_at = 0.0
        self._client_write_paused_at = 0.0
        self._reading_paused_by = 0  # bit 1: upstream full, 2: pipelining, 4: pending body
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.req: RequestHead | None = None
        self.up_req: UpstreamRequest | None = None
        self.upstream: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_end: Headers | None = None
        self.request_done = False
        self.body_forwarded = False
        self.response_started = False
        self.response_chunked = False
        self.close_after = False
        self.status = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.started = 0.0
        self.wall_start = 0.0
        self.upstream_started = 0.0
        self.upstream_peer: str | None = None
        self.upstream_keep_alive = False

    # =============================================================== connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        shared = self.shared
        if len(shared.connections) >= shared.config.server.max_connections:
            # Over capacity: close at once; the ones we already serve keep working.
            shared.observer.client_error("over_capacity")
            self.state = CLOSED
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.client_ip = normalise_ip(str(peer[0]))
        self.client_port = int(peer[1]) if len(peer) > 1 else 0
        self.family = family_of(self.client_ip)
        sock = transport.get_extra_info("sockname") or ("", 0)
        upstream_cfg = shared.config.upstream
        self.ctx = ClientContext(
            client_ip=self.client_ip,
            listen_port=str(sock[1] if len(sock) > 1 else 0).encode(),
            trusted=is_trusted(self.client_ip, shared.config.server.trusted_proxies),
            upstream_authority=upstream_cfg.servers[0].authority.encode(),
            preserve_host=upstream_cfg.host_header == "preserve",
        )
        shared.connections.add(self)
        self.counted = True
        shared.observer.connection_opened(self.family)
        now = self.loop.time()
        self._idle_since = now
        self._head_started = now  # the first head is due header_timeout after accept
        self._arm(now + self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.client_data(data)
            return
        now = self.loop.time()
        self._client_activity = now
        arm_head = False
        if self.state == IDLE:
            if not self._head_started:
                self._head_started = now
                arm_head = True
        elif self.request_done:
            # Pipelined bytes while a response is in flight: the codec keeps
            # them; stop reading so a client cannot make us buffer without bound.
            self._pause_reading(2)
        try:
            self.codec.feed(data)
        except ClientError as exc:
            self._client_fault(exc)
            return
        if arm_head and self.state == IDLE and self._head_started:
            # The head spans reads: it is due header_timeout after its first byte.
            # (A head that arrived whole, the usual case, costs no timer call.)
            self._arm(now + self.header_timeout)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.client_eof()
        clean = self.codec.feed_eof()
        if self.state == ACTIVE and self.request_done:
            # Half-close after a complete request: finish the response, then close.
            self.close_after = True
            return True
        if not clean and self.state == ACTIVE:
            self._abort_exchange("client closed mid-request")
        return None  # transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            self.tunnel.client_lost()
        elif self.state == ACTIVE:
            self._abort_exchange("client connection lost")
        self._close_state()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_pause_writing()
            return
        self._client_write_paused_at = self.loop.time()
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_resume_writing()
            return
        self._client_write_paused_at = 0.0
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    # ================================================================ requests
    def on_request_head(self, head: RequestHead) -> None:
        now = self.loop.time()
        self.state = ACTIVE
        self._head_started = 0.0
        self._first_request = False
        self.req = head
        self.started = now
        self._client_activity = now
        self.wall_start = time.time()
        assert self.ctx is not None
        try:
            self.up_req = build_upstream_request(head, self.ctx, max_body_bytes=self.max_body_bytes)
        except ClientError as exc:
            self._client_fault(exc)
            return
        if head.content_length or head.chunked:
            self._arm(now + self.body_timeout)
        conn = self.shared.pool.acquire()
        if conn is not None:
            self.upstream_ready(conn, True)
        else:
            self.shared.pool.connect(self)

    def on_request_body(self, data: bytes) -> None:
        if self.state != ACTIVE:
            return
        self.bytes_received += len(data)
        if self.max_body_bytes and self.bytes_received > self.max_body_bytes:
            self._client_fault(
                ClientError("request body too large", status=413, kind="body_too_large")
            )
            return
        up = self.upstream
        if up is not None:
            up.write_pieces(up.codec.encode_body(data))
            self.body_forwarded = True
        else:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_BODY_HIGH_WATER_BYTES:
                self._pause_reading(4)

    def on_request_end(self, trailers: Headers) -> None:
        if self.state != ACTIVE:
            return
        self.request_done = True
        now = self.loop.time()
        self._upstream_activity = now
        up = self.upstream
        if up is not None:
            if not (self.up_req and self.up_req.chunked):
                trailers = []
            up.write(up.codec.encode_end(trailers))
            self._arm(now + self.read_timeout)
        else:
            self.pending_end = trailers

    # =============================================================== upstream
    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        if self.state != ACTIVE or self.up_req is None:
            # The client went away while we connected: keep the connection for others.
            self.shared.pool.release(conn, used=False)
            return
        self.upstream = conn
        self.upstream_peer = conn.peer
        self.reused = reused
        conn.owner = self
        self.shared.observer.upstream_acquired(reused)
        up_req = self.up_req
        head = conn.codec.encode_request_head(
            up_req.method,
            up_req.target,
            up_req.headers,
            chunked=up_req.chunked,
            upgrade=up_req.websocket,
        )
        now = self.loop.time()
        self.upstream_started = now
        self._upstream_activity = now
        if self.pending:
            pieces = [head]
            for data in self.pending:
                pieces += conn.codec.encode_body(data)
            conn.write_pieces(pieces)
            self.pending = []
            self.pending_bytes = 0
            self.body_forwarded = True
            self._resume_reading(4)
        else:
            conn.write(head)
        if self.pending_end is not None or (self.request_done and not self.body_forwarded):
            trailers = self.pending_end if self.pending_end and up_req.chunked else []
            self.pending_end = None
            conn.write(conn.codec.encode_end(trailers))
            self._arm(now + self.read_timeout)

    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None:
        if conn is not None and conn is not self.upstream:
            return
        if self.state != ACTIVE:
            return
        self.shared.observer.upstream_error(error.kind)
        self.upstream = None
        if conn is not None:
            self.shared.pool.detach(conn)
        if (
            conn is not None
            and self.reused
            and not self.retried
            and not self.response_started
            and not self.body_forwarded
            and self.req is not None
            and self.req.method in IDEMPOTENT_METHODS
        ):
            # A pooled connection the upstream closed while idle: one retry on a
            # fresh connection (never for a non-idempotent request: it was sent).
            self.retried = True
            self.shared.pool.connect(self, exclude=None)
            return
        if not self.response_started:
            log.warning(
                "upstream error: %s",
                error.detail,
                extra={"client": self.client_ip, "kind": error.kind},
            )
            self._send_error(error)
        else:
            log.warning(
                "upstream failed mid-response, aborting client: %s",
                error.detail,
                extra={"client": self.client_ip, "kind": error.kind},
            )
            self._abort_exchange(error.kind)

    def upstream_data_seen(self) -> None:
        self._upstream_activity = self.loop.time()

    def upstream_pause_writing(self) -> None:
        self._upstream_write_paused_at = self.loop.time()
        self._pause_reading(1)

    def upstream_resume_writing(self) -> None:
        self._upstream_write_paused_at = 0.0
        self._resume_reading(1)

    # ============================================================== responses
    def on_response_head(self, head: ResponseHead) -> None:
        req = self.req
        transport = self.transport
        if req is None or transport is None or self.state != ACTIVE:
            return
        up_req = self.up_req
        if head.status < 200:
            if head.status == 101:
                if up_req is not None and up_req.websocket:
                    self._start_tunnel(head)
                else:
                    self._upstream_protocol_error(
                        "101 Switching Protocols the client did not ask for"
                    )
            elif req.version == b"1.1" and (head.status != 100 or req.expect_continue):
                # RFC 9110 §15.2: forward 1xx to HTTP/1.1 clients.
                self._out.append(self.codec.encode_informational(head.status, head.reason, []))
            return
        self.response_started = True
        self.status = head.status
        self.upstream_keep_alive = head.keep_alive
        close = self.shared.draining or self.close_after or not self.request_done
        out = build_client_response(head, req, close=close)
        self.close_after = out.close
        self.response_chunked = out.chunked
        try:
            self._out.append(
                self.codec.encode_response_head(
                    head.status, head.reason, out.headers, chunked=out.chunked
                )
            )
        except Exception as exc:  # h11 refuses a head it cannot frame
            self._upstream_protocol_error(f"cannot forward response head: {exc}")

    def on_response_body(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or not self.response_started:
            return
        self.bytes_sent += len(data)
        self._out += self.codec.encode_body(data)

    def on_response_end(self, trailers: Headers) -> None:
        transport = self.transport
        up = self.upstream
        if transport is None or up is None or not self.response_started:
            return
        self._out.append(self.codec.encode_end(trailers if self.response_chunked else []))
        up.owner = None
        self.upstream = None
        pool = self.shared.pool
        if self.request_done and self.upstream_keep_alive:
            pool.release(up)
        else:
            pool.detach(up)
            up.close()
        self._finish()

    # ================================================================= tunnel
    def _start_tunnel(self, head: ResponseHead) -> None:
        up = self.upstream
        transport = self.transport
        req = self.req
        if up is None or transport is None or up.transport is None or req is None:
            return
        self.status = 101
        self.flush()
        transport.write(
            self.codec.encode_informational(101, head.reason, build_switch_response(head))
        )
        from_client = self.codec.switch_protocols()
        from_upstream = up.codec.switch_protocols()
        self._cancel_timer()
        self._resume_reading(7)
        self.shared.pool.detach(up)
        up.owner = None
        self.upstream = None
        self.state = TUNNEL
        shared = self.shared
        record = TunnelRecord(
            client_ip=self.client_ip,
            client_port=self.client_port,
            family=self.family,
            target=req.target.decode("latin-1"),
            host=(self.up_req.host if self.up_req else b"").decode("latin-1"),
            upstream_addr=up.peer,
            start_time=self.wall_start,
            duration=0.0,
            bytes_from_client=0,
            bytes_to_client=0,
            close_reason="",
        )
        tunnel = Tunnel(
            transport,
            up.transport,
            idle_timeout=shared.config.websocket.idle_timeout,
            record=record,
            on_close=self._tunnel_closed,
        )
        self.tunnel = tunnel
        up.tunnel = tunnel
        shared.tunnels.add(tunnel)
        shared.observer.websocket_opened()
        tunnel.start(from_upstream, from_client)

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        self.shared.tunnels.discard(tunnel)
        self.shared.observer.websocket_closed(tunnel.record)

    # ================================================================ ending
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

    def _finish(self) -> None:
        """The response is complete: record it, then next cycle or close."""
        self.flush()
        self._record(None)
        close = self.close_after or self.shared.draining or not self.request_done
        self._reset_exchange()
        self.state = IDLE
        transport = self.transport
        if close or transport is None:
            self.state = CLOSED
            if transport is not None:
                transport.close()
            return
        now = self.loop.time()
        self._idle_since = now
        self._head_started = 0.0
        self._arm(now + self.keepalive_timeout)
        self._resume_reading(7)
        try:
            self.codec.start_next_cycle()
        except ClientError as exc:
            self._client_fault(exc)

    def _record(self, error: str | None) -> None:
        req = self.req
        if req is None:
            return
        now = self.loop.time()
        upstream_started = self.upstream_started
        self.shared.observer.request_done(
            RequestRecord(  # positional: this runs once per request
                self.client_ip,
                self.client_port,
                self.family,
                req,
                self.status,
                self.bytes_received,
                self.bytes_sent,
                self.wall_start,
                now - self.started,
                self.upstream_peer,
                (now - upstream_started) if upstream_started else None,
                error,
            )
        )

    def _client_fault(self, exc: ClientError) -> None:
        """The client sent something we refuse: answer with its status and close."""
        self.shared.observer.client_error(exc.kind if exc.status != 431 else "header_too_large")
        log.info(
            "client error %d: %s",
            exc.status,
            exc.detail,
            extra={"client": self.client_ip, "kind": exc.kind},
        )
        if self.req is None:
            self.req = RequestHead(b"-", b"-", b"1.1", [], False, None, False, None, False)
            self.started = self.loop.time()
            self.wall_start = time.time()
        if self.upstream is not None:
            self.shared.pool.detach(self.upstream)
            self.upstream.abort()
            self.upstream = None
        if self.response_started:
            self._abort_exchange(exc.kind)
        else:
            self._send_error(exc)

    def _upstream_protocol_error(self, detail: str) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            self.shared.pool.detach(up)
            up.abort()
        self.upstream_failed(None, UpstreamError(detail, kind="protocol"))

    def _send_error(self, error: ProxyError) -> None:
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        self._out = []  # an interim 1xx at most: the error replaces it
        reason, headers, body = error_response(error.status)
        self.status = error.status
        self.bytes_sent = len(body)
        # Written raw, not through the codec: the connection closes right after.
        data = wire.status_head(error.status, reason, headers)
        if self.req is None or self.req.method != b"HEAD":
            data += body
        self._record(error.kind)
        transport.write(data)
        self._shutdown_transport()

    def _abort_exchange(self, kind: str) -> None:
        """Tear down a half-done exchange: never complete a truncated response."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            self.shared.pool.detach(up)
            up.abort()
        if self.status == 0 or not self.response_started:
            self.status = CLIENT_CLOSED_STATUS if kind.startswith("client") else self.status
        self._record(kind)
        self.state = CLOSED
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def _shutdown_transport(self) -> None:
        self.state = CLOSED
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _close_state(self) -> None:
        self.state = CLOSED
        self._cancel_timer()
        if self.counted:
            self.counted = False
            shared = self.shared
            shared.connections.discard(self)
            shared.observer.connection_closed(self.family)
            if not shared.connections and shared.all_closed is not None:
                shared.all_closed.set()
        up = self.upstream
        if up is not None:
            self.upstream = None
            self.shared.pool.detach(up)
            up.abort()

    def close_if_idle(self) -> bool:
        """Graceful shutdown: close now when no request is in flight."""
        if self.state == IDLE and not self._head_started and self.transport is not None:
            self.state = CLOSED
            self.transport.close()
            return True
        if self.state == ACTIVE:
            self.close_after = True
        return False

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.abort("shutdown")
        elif self.transport is not None:
            self.transport.abort()

    # ============================================================ flow control
    def _pause_reading(self, reason: int) -> None:
        if not self._reading_paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._reading_paused_by |= reason

    def _resume_reading(self, reasons: int) -> None:
        was = self._reading_paused_by
        self._reading_paused_by &= ~reasons
        transport = self.transport
        if was and not self._reading_paused_by and transport and not transport.is_closing():
            transport.resume_reading()

    # ================================================================ timers
    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # an earlier check is due anyway and re-arms for the rest
            timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.state == CLOSED or self.tunnel is not None:
            return
        now = self.loop.time()
        nxt = self._next_deadline(now)
        if nxt is not None:
            self._arm(nxt)

    def _next_deadline(self, now: float) -> float | None:
        """Act on every deadline that passed; return the next one (or None)."""
        if self.state == IDLE:
            if self._head_started:
                due = self._head_started + self.header_timeout
                if now >= due:
                    self.shared.observer.client_error("header_timeout")
                    if self.codec.head_in_progress or self._first_request:
                        if not self.codec.head_in_progress and self._first_request:
                            # Connected but never sent a byte: just close.
                            self._shutdown_transport()
                            return None
                        self._send_error(
                            ClientError("request head timed out", status=408, kind="header_timeout")
                        )
                    else:
                        self._shutdown_transport()
                    return None
                return due
            due = self._idle_since + self.keepalive_timeout
            if now >= due:
                self._shutdown_transport()
                return None
            return due
        if self.state != ACTIVE:
            return None
        deadlines: list[float] = []
        if not self.request_done and not self._reading_paused_by:
            due = self._client_activity + self.body_timeout
            if now >= due:
                self._body_timeout()
                return None
            deadlines.append(due)
        if self._upstream_write_paused_at:
            due = self._upstream_write_paused_at + self.send_timeout
            if now >= due:
                self._upstream_timeout("sending to upstream timed out")
                return None
            deadlines.append(due)
        if self.upstream is not None and self.request_done and not self._client_write_paused_at:
            due = self._upstream_activity + self.read_timeout
            if now >= due:
                self._upstream_timeout("upstream read timed out")
                return None
            deadlines.append(due)
        if self._client_write_paused_at:
            due = self._client_write_paused_at + self.body_timeout
            if now >= due:
                self._abort_exchange("client_write_timeout")
                return None
            deadlines.append(due)
        if not deadlines:
            # Waiting on a connect (it has its own timeout) or paused by backpressure.
            return now + 1.0
        return min(deadlines)

    def _body_timeout(self) -> None:
        self.shared.observer.client_error("body_timeout")
        if self.response_started:
            self._abort_exchange("body_timeout")
        else:
            up = self.upstream
            self.upstream = None
            if up is not None:
                self.shared.pool.detach(up)
                up.abort()
            self._send_error(ClientError("request body timed out", status=408, kind="body_timeout"))

    def _upstream_timeout(self, detail: str) -> None:
        self.shared.observer.upstream_error("timeout")
        up = self.upstream
        self.upstream = None
        if up is not None:
            self.shared.pool.detach(up)
            up.abort()
        log.warning(detail, extra={"client": self.client_ip, "kind": "timeout"})
        if self.response_started:
            self._abort_exchange("timeout")
        else:
            self._send_error(UpstreamError(detail, status=504, kind="timeout"))
