"""One HTTP/2 stream as the host of its exchange (``ExchangeHost``), or of a WebSocket relay.

A stream lives from the client's HEADERS to the moment both directions are
over and everything queued for the client was handed to h2; then the
connection forgets it. States, per direction:

    request     open until END_STREAM (``request_open``), or reset
    response    queued (head, body pieces, end) by the exchange during one
                upstream read, emitted to h2 on ``flush``; pieces the
                client's windows do not admit yet stay in ``out``

Flow control, both ways (RFC 9113 §5.2):

* request body: DATA is acknowledged (WINDOW_UPDATE, for the stream and the
  connection) only once the upstream took the bytes, i.e. while the
  exchange's upstream write buffer is below its high-water mark and the
  upstream connection exists. So a client can never have more than its
  stream window in flight beyond what the upstream accepted.
* response body: pieces are sent as far as the client's stream and
  connection windows allow (in frames of at most its SETTINGS_MAX_FRAME_SIZE);
  beyond ``STREAM_BUFFER_BYTES`` queued, or while the client's socket is
  full, the exchange stops reading its upstream connection until it drains.
  A stream whose queued bytes make no progress for ``server.body_timeout``
  is reset (CANCEL): a client that never opens its window holds one bounded
  buffer per stream, for a bounded time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from h2.exceptions import ProtocolError

from dsproxy.errors import ClientError, ProxyError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.h2codec import CANCEL, INTERNAL_ERROR, NO_ERROR
from dsproxy.http.h2map import (
    StreamProtocolError,
    error_fields,
    informational_fields,
    map_trailers,
    response_fields,
    trailer_fields,
    websocket_fields,
)
from dsproxy.http.rules import error_response
from dsproxy.proxy.exchange import CONNECTING, Exchange

if TYPE_CHECKING:
    from dsproxy.proxy.h2connection import Http2Connection
    from dsproxy.proxy.h2tunnel import H2Relay
    from dsproxy.proxy.upstream import UpstreamConnection

# Response bytes queued per stream beyond which its upstream is not read (the client's
# window is closed or its socket is full). One upstream read may come on top.
STREAM_BUFFER_BYTES = 64 * 1024
# Shared empty defaults (a stream never changes them in place: it assigns new lists).
NO_FIELDS: Headers = []
NO_DATA: list[bytes] = []


class H2Stream:
    """The client side of one exchange: HTTP/2 frames on a shared connection."""

    __slots__ = (
        "conn", "h2", "sid", "exchange", "relay", "ws_key", "early", "ctx", "client_ip",
        "client_port", "family", "observer", "body_timeout", "clock", "arm", "paused",
        "unacked",
        "request_open", "trailers_in", "head_out", "out", "out_bytes", "end_queued",
        "trailers_out", "ended", "closed", "upstream_paused", "progress_at", "reset_after_end",
    )  # fmt: skip

    def __init__(self, conn: Http2Connection, sid: int, ended: bool) -> None:
        self.conn = conn
        self.h2 = conn.h2
        self.sid = sid
        self.exchange: Exchange | None = None
        self.relay: H2Relay | None = None
        self.ws_key = b""  # the Sec-WebSocket-Key sent upstream for an extended CONNECT
        self.early: list[bytes] = NO_DATA  # a WebSocket's DATA before the upstream's 101
        # ExchangeHost: what every stream of the connection shares.
        self.ctx = conn.ctx
        self.client_ip = conn.client_ip
        self.client_port = conn.client_port
        self.family = conn.family
        self.observer = conn.observer
        self.body_timeout = conn.body_timeout
        self.clock = conn.clock
        self.arm = conn.arm
        # Request direction.
        self.paused = False  # the exchange asked to stop reading (upstream full / connecting)
        self.unacked = 0  # flow-controlled bytes received and not yet given back
        self.request_open = not ended
        self.trailers_in: Headers = NO_FIELDS
        # Response direction.
        self.head_out: Headers | None = None
        self.out: deque[bytes | memoryview] = deque()
        self.out_bytes = 0
        self.end_queued = False
        self.trailers_out: Headers = NO_FIELDS
        self.ended = False  # END_STREAM handed to h2
        self.closed = False  # reset, or forgotten by the connection
        self.upstream_paused = False
        self.progress_at = 0.0  # last time queued bytes went out (while some are queued)
        self.reset_after_end = False  # RST_STREAM(NO_ERROR) once the response is out

    # ======================================================== request events
    def on_data(self, data: bytes, flow_len: int, now: float) -> None:
        self.unacked += flow_len
        relay = self.relay
        if relay is not None:
            relay.from_client(data)
            return
        ex = self.exchange
        if self.ws_key and ex is not None:
            self.early = [*self.early, data]  # for the relay (not given back until then)
            return
        if ex is not None and self.request_open:
            ex.client_activity = now
            if data:
                ex.request_body(data, self.conn.max_body_bytes)
        self.give_back()

    def give_back(self) -> None:
        """Acknowledge received bytes the upstream has taken (WINDOW_UPDATE)."""
        if not self.unacked:
            return
        ex = self.exchange
        if ex is not None and (self.paused or ex.state == CONNECTING):
            return  # the upstream has not taken them (it resumes us when it does)
        if self.relay is not None and self.relay.upstream_full:
            return
        unacked, self.unacked = self.unacked, 0
        self.h2.acknowledge_received_data(unacked, self.sid)

    def on_trailers(self, fields: Headers) -> None:
        try:
            trailers, size = map_trailers(fields)
        except StreamProtocolError as exc:
            self.conn.refuse_stream(self, str(exc))
            return
        if size > self.conn.max_header_list_bytes and self.exchange is not None:
            self.exchange.refuse(
                ClientError("trailer section too large", status=431, kind="header_too_large")
            )
            return
        self.trailers_in = trailers

    def on_end(self) -> None:
        self.request_open = False
        if self.relay is not None:
            self.relay.client_eof()
            return
        ex = self.exchange
        if ex is not None:
            if not self.ws_key:  # an Upgrade request has ended already; the relay passes it on
                ex.request_end(self.trailers_in)
        elif self.ended and not self.out:
            self.finish()

    def on_reset(self, kind: str) -> None:
        """The client reset the stream (or h2 did, because of the client's frames)."""
        self.closed = True
        self.request_open = False
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.client_gone(kind)
        if self.relay is not None:
            self.relay.close("client_closed")
        self.finish()

    def connection_gone(self) -> None:
        self.closed = True
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.client_gone("client connection lost")
        if self.relay is not None:
            self.relay.close("client_closed")

    # ============================================== ExchangeHost: request flow
    @property
    def reading_paused(self) -> bool:
        return self.paused

    def pause_request(self) -> None:
        self.paused = True

    def resume_request(self) -> None:
        self.paused = False
        if self.unacked:
            self.give_back()
            self.conn.flush()

    # ================================================== ExchangeHost: response
    def send_informational(self, status: int, reason: bytes, request: RequestHead) -> None:
        if not self.closed and self.head_out is None:
            self._h2_call(self.h2.send_headers, self.sid, informational_fields(status))

    def send_response_head(self, head: ResponseHead, exchange: Exchange) -> None:
        self.head_out = response_fields(head)

    def send_body(self, data: bytes) -> None:
        if data:
            self.out.append(data)
            self.out_bytes += len(data)

    def send_end(self, trailers: Headers) -> None:
        self.end_queued = True
        if trailers:
            self.trailers_out = trailer_fields(trailers)

    def flush(self) -> None:
        """After an upstream read: hand what it produced to h2, then write once."""
        self.emit()
        self.conn.flush()

    def send_error(self, error: ProxyError, request: RequestHead) -> int:
        """The proxy's own short plain-text response; the stream ends with it."""
        status = error.status
        _, headers, body = error_response(status)
        if request.method == b"HEAD":
            body = b""
        self.exchange = None
        self.out.clear()
        self.out_bytes = 0
        self.trailers_out = NO_FIELDS
        self.head_out = error_fields(status, headers)
        self.send_body(body)
        self.end_queued = True
        if self.request_open:
            self.reset_after_end = True  # RFC 9113 §8.1: stop the body with NO_ERROR
        self.flush()
        return len(body)

    def abort_client(self) -> None:
        """End the stream at once: a truncated response is never passed off as whole."""
        ex, self.exchange = self.exchange, None
        slow = ex is not None and ex.client_write_paused_at > 0
        self.reset(CANCEL if slow else INTERNAL_ERROR)
        self.conn.flush()

    def exchange_done(self, exchange: Exchange) -> None:
        self.exchange = None
        if self.request_open:
            self.reset_after_end = True
        self.emit()
        self.conn.flush()

    def switch_protocols(
        self, exchange: Exchange, conn: UpstreamConnection, head: ResponseHead
    ) -> None:
        """The upstream accepted the WebSocket: answer 200 and relay DATA <-> bytes."""
        from dsproxy.proxy.h2tunnel import start_relay

        self.exchange = None
        fields = websocket_fields(head, self.ws_key)
        if fields is None or conn.transport is None:
            conn.abort()
            exchange.status = 502
            exchange.bytes_sent = self.send_error(
                ProxyError("bad Sec-WebSocket-Accept", status=502, kind="protocol"), exchange.head
            )
            exchange.record("protocol")
            return
        self.head_out = fields
        start_relay(self, exchange, conn)

    # ================================================================ output
    def emit(self) -> None:
        """Hand the queued head, body and end to h2 as far as the windows allow."""
        if self.closed:
            return
        try:
            self._emit()
        except ProtocolError:  # h2 closed the stream meanwhile (a reset in the same read)
            self.closed = True
            self.out.clear()
            self.out_bytes = 0
            self.finish()

    def _emit(self) -> None:
        h2 = self.h2
        sid = self.sid
        head = self.head_out
        if head is not None:
            self.head_out = None
            if self.end_queued and not self.out and not self.trailers_out:
                h2.send_headers(sid, head, end_stream=True)
                self._ended()
                return
            h2.send_headers(sid, head)
        out = self.out
        if out:
            window = h2.local_flow_control_window(sid)
            if window > 0:
                max_frame = h2.max_outbound_frame_size
                end_on_data = self.end_queued and not self.trailers_out
                sent = 0
                while out and window > 0:
                    piece = out[0]
                    size = len(piece)
                    if size <= window and size <= max_frame:
                        out.popleft()
                        h2.send_data(sid, piece, end_stream=end_on_data and not out)
                    else:
                        size = min(window, max_frame)
                        view = piece if isinstance(piece, memoryview) else memoryview(piece)
                        out[0] = view[size:]
                        h2.send_data(sid, view[:size])
                    window -= size
                    sent += size
                self.out_bytes -= sent
                self.progress_at = self.conn.clock()
                if not out and end_on_data:
                    self._ended()
                    return
            if out:
                if not self.progress_at:
                    self.progress_at = self.conn.clock()
                self.conn.blocked.add(self)
                self.check_upstream_pause()
                return
        self.progress_at = 0.0
        self.conn.blocked.discard(self)
        if self.upstream_paused:
            self.check_upstream_pause()
        if self.end_queued and not self.ended:
            if self.trailers_out:
                h2.send_headers(sid, self.trailers_out, end_stream=True)
            else:
                h2.end_stream(sid)
            self._ended()

    def _ended(self) -> None:
        self.ended = True
        self.progress_at = 0.0
        self.conn.blocked.discard(self)
        if self.reset_after_end and self.request_open:
            self.reset(NO_ERROR)
            return
        if not self.request_open and self.exchange is None and self.relay is None:
            self.finish()

    def check_upstream_pause(self) -> None:
        """Stop reading the upstream while the client cannot take more, resume when it can."""
        full = self.out_bytes > STREAM_BUFFER_BYTES or self.conn.write_paused_at > 0
        if full == self.upstream_paused:
            return
        self.upstream_paused = full
        ex = self.exchange
        if ex is not None:
            if full:
                ex.client_pause_writing()
            else:
                ex.client_resume_writing()
        elif self.relay is not None:
            self.relay.pause_upstream(full)

    def next_deadline(self, now: float) -> float | None:
        """The exchange's deadlines, and the one of queued bytes the client never takes."""
        nxt: float | None = None
        ex = self.exchange
        if ex is not None:
            nxt = ex.next_deadline(now)
        if self.out and self.progress_at and not self.closed:
            due = self.progress_at + self.body_timeout
            if now >= due:
                ex = self.exchange
                if ex is not None:
                    ex.abort("client_write_timeout")
                else:
                    self.reset(CANCEL)
                return None
            nxt = due if nxt is None else min(nxt, due)
        return nxt

    # ================================================================ ending
    def reset(self, code: int) -> None:
        """RST_STREAM with ``code``; the stream is over on both sides."""
        if not self.closed:
            self.closed = True
            self._h2_call(self.h2.reset_stream, self.sid, code)
        self.request_open = False
        self.out.clear()
        self.out_bytes = 0
        if self.relay is not None:
            self.relay.close("client_closed")
        self.finish()

    def finish(self) -> None:
        """Forget this stream: give back the window it holds, free its slot."""
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self._h2_call(self.h2.acknowledge_received_data, unacked, self.sid)
        self.conn.stream_finished(self)

    def _h2_call(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except ProtocolError:  # the stream is already closed on h2's side
            self.closed = True
