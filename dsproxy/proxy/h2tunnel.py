"""WebSocket over HTTP/2 (RFC 8441): one stream's DATA frames <-> the upstream's raw bytes.

An extended CONNECT went upstream as an HTTP/1.1 Upgrade; the upstream's 101
was answered on the stream with a 200. From then on the upstream transport
belongs to an ``H2Relay`` (its protocol is swapped, as the HTTP/1.1 tunnel
does), and the stream carries the bytes:

* client DATA is written to the upstream socket and acknowledged (the
  stream's WINDOW_UPDATE) only while the upstream's write buffer is below its
  high-water mark, so a client can have at most its stream window in flight;
* upstream bytes go out as DATA as far as the client's windows allow; beyond
  the stream's buffer (or while the client's socket is full) the upstream is
  not read until they drain;
* END_STREAM and the upstream's FIN are passed on (half-close; RFC 8441 §4);
  the relay ends when both directions are done, when either side is lost
  (RST_STREAM CANCEL towards the client), or after ``idle_timeout`` without
  a byte either way.

The session is reported as a ``TunnelRecord`` (protocol ``h2``) when it ends,
like an HTTP/1.1 tunnel.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from dsproxy.http.h2codec import CANCEL, NO_ERROR
from dsproxy.observe.records import TunnelRecord
from dsproxy.proxy.recording import tunnel_record

if TYPE_CHECKING:
    from dsproxy.proxy.exchange import Exchange
    from dsproxy.proxy.h2stream import H2Stream
    from dsproxy.proxy.upstream import UpstreamConnection


class RelayUpstream(asyncio.Protocol):
    """The upstream socket of a relay: what it reads goes to the stream."""

    __slots__ = ("relay",)

    def __init__(self, relay: H2Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.to_client(data)

    def eof_received(self) -> bool:
        self.relay.upstream_eof()
        return True  # the client may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close("upstream_closed")

    def pause_writing(self) -> None:
        self.relay.set_upstream_full(True)

    def resume_writing(self) -> None:
        self.relay.set_upstream_full(False)


class H2Relay:
    __slots__ = (
        "stream", "transport", "record", "idle_timeout", "upstream_full", "client_done",
        "upstream_done", "closed", "bytes_from_client", "bytes_to_client", "_started",
        "last_activity", "_timer",
    )  # fmt: skip

    def __init__(
        self,
        stream: H2Stream,
        transport: asyncio.Transport,
        record: TunnelRecord,
        idle_timeout: float,
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.record = record
        self.idle_timeout = idle_timeout
        self.upstream_full = False
        self.client_done = False  # END_STREAM from the client
        self.upstream_done = False  # FIN from the upstream
        self.closed = False
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self._started = time.monotonic()
        self.last_activity = self._started
        self._timer: asyncio.TimerHandle | None = None

    def start(self, leftover: bytes) -> None:
        self.transport.set_protocol(RelayUpstream(self))
        if self.idle_timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.idle_timeout, self._check_idle)
        stream = self.stream
        stream.observer.websocket_opened()
        stream.emit()  # the 200
        if leftover:
            self.to_client(leftover)
        early, stream.early = stream.early, []
        for data in early:  # DATA the client sent before the 200
            self.from_client(data)
        if not stream.request_open:
            self.client_eof()
        stream.give_back()
        stream.conn.flush()

    # -- client -> upstream ---------------------------------------------------
    def from_client(self, data: bytes) -> None:
        if self.closed:
            self.stream.give_back()
            return
        if data:
            self.bytes_from_client += len(data)
            self.last_activity = time.monotonic()
            self.transport.write(data)
        self.stream.give_back()

    def set_upstream_full(self, full: bool) -> None:
        self.upstream_full = full
        if not full and not self.closed:
            self.stream.give_back()
            self.stream.conn.flush()

    def client_eof(self) -> None:
        self.client_done = True
        if self.upstream_done:
            self.close("client_closed")
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    # -- upstream -> client ---------------------------------------------------
    def to_client(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_to_client += len(data)
        self.last_activity = time.monotonic()
        stream = self.stream
        stream.send_body(data)
        stream.flush()

    def pause_upstream(self, paused: bool) -> None:
        if self.closed or self.transport.is_closing():
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def upstream_eof(self) -> None:
        self.upstream_done = True
        stream = self.stream
        stream.send_end([])
        stream.flush()
        if self.client_done:
            self.close("upstream_closed")

    # -- ending ---------------------------------------------------------------
    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        idle_for = time.monotonic() - self.last_activity
        if idle_for >= self.idle_timeout:
            self.close("idle_timeout")
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.idle_timeout - idle_for, self._check_idle)

    def close(self, reason: str) -> None:
        """End the session: the upstream socket is closed, the stream ended or reset."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.close()
        stream = self.stream
        stream.relay = None
        record = self.record
        record.close_reason = reason
        record.duration = time.monotonic() - self._started
        record.bytes_from_client = self.bytes_from_client
        record.bytes_to_client = self.bytes_to_client
        stream.observer.websocket_closed(record)
        if stream.ended and not stream.request_open:
            stream.finish()
        elif stream.end_queued and not stream.closed:
            # The upstream's FIN is (or is queued as) END_STREAM: let it go out, then
            # tell a client still sending to stop (RST_STREAM NO_ERROR).
            stream.reset_after_end = True
            if stream.ended:
                stream.reset(NO_ERROR)
            else:
                stream.emit()
        else:
            stream.reset(CANCEL)
        stream.conn.flush()


def start_relay(stream: H2Stream, exchange: Exchange, conn: UpstreamConnection) -> None:
    """Hand the upstream transport of a switched exchange to a relay on ``stream``."""
    transport = cast(asyncio.Transport, conn.transport)
    leftover = conn.codec.switch_protocols()
    record = tunnel_record(exchange, conn)
    record.protocol = "h2"
    relay = H2Relay(stream, transport, record, exchange.route.websocket_idle_timeout)
    stream.relay = relay
    relay.start(leftover)
