"""The HTTP/2 client side: one asyncio.Protocol per connection, an exchange per stream.

A ``ClientConnection`` hands its transport over (``adopt``) when TLS
negotiated ALPN ``h2`` or, with ``server.h2c``, when a cleartext connection
opens with the HTTP/2 preface; from then on this protocol owns the
transport, an ``h2.connection.H2Connection`` (the frame codec and the
protocol's state), its deadlines and its streams. Each request stream gets
an ``H2Stream`` as the host of one ``Exchange`` over the same HTTP/1.1
upstream pools as HTTP/1.1 clients use. States:

    OPEN       serving streams
    DRAINING   a GOAWAY with the largest stream id went out (graceful shutdown
               step one) and a PING; its ACK (or DRAIN_PING_SECONDS) triggers
    CLOSING    the GOAWAY naming the last stream processed; streams above it
               are refused, the connection closes when the last one is done
    CLOSED

Writes are batched: what h2 produces while handling one client read goes out
with one ``transport.write`` at its end; what the streams' upstream reads
produce goes out with one write at the end of the loop iteration (``flush``).

Limits (docs/reliability.md, section 9): http2.max_concurrent_streams is
advertised and enforced with REFUSED_STREAM; header lists over
http2.max_header_list_bytes get 431 (twice that is an HPACK bomb, a
connection error); ``FrameGuard`` bounds header blocks, control frames and
stream resets (the client's and those the client provoked); an idle
connection closes after server.keepalive_timeout, an unfinished header
block after server.header_timeout, a client that stops reading after
server.body_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from h2.exceptions import ProtocolError

from dsproxy.http.h2codec import (
    DRAIN_PING,
    ENHANCE_YOUR_CALM,
    HPACK_BOMB_FACTOR,
    INTERNAL_ERROR,
    MAX_STREAM_ID,
    NO_ERROR,
    PROTOCOL_ERROR,
    goaway_frame,
    refusal_frames,
    server_codec,
)
from dsproxy.http.h2frames import VIOLATIONS, FrameGuard, TokenBucket
from dsproxy.http.rules import ClientContext
from dsproxy.net.addr import Family
from dsproxy.proxy.flow import DeadlineTimer
from dsproxy.proxy.h2events import HANDLERS
from dsproxy.proxy.h2stream import H2Stream
from dsproxy.proxy.limits import ClientLimits
from dsproxy.proxy.shared import ServedConnection, Shared

log = logging.getLogger("dsproxy.proxy.h2")

OPEN: Final = 0
DRAINING: Final = 1
CLOSING: Final = 2
CLOSED: Final = 3

# Graceful shutdown: the second GOAWAY goes out when the PING sent with the first is
# acknowledged (the client has seen the first), or after this long.
DRAIN_PING_SECONDS: Final = 1.0


class Peer(ServedConnection, Protocol):
    """The HTTP/1.1 connection whose transport an HTTP/2 connection adopts."""

    transport: asyncio.Transport | None
    client_key: str
    client_ip: str
    client_port: int
    family: Family
    ctx: ClientContext


class Http2Connection(asyncio.Protocol):
    # Slotted: attribute access on the per-stream path stays fast however many there are.
    __slots__ = (
        "shared", "header_timeout", "body_timeout", "keepalive_timeout", "max_body_bytes",
        "max_streams", "max_header_list_bytes", "websocket", "observer", "loop", "clock",
        "transport", "h2", "streams", "blocked", "guard", "state", "last_stream_id",
        "client_ip", "client_port", "family", "ctx", "client_key", "limits", "counted",
        "_timer", "arm", "_receiving", "_flush_due", "now", "write_paused_at", "_idle_since",
        "served", "_drain_at",
    )  # fmt: skip

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        server = shared.config.server
        http2 = shared.config.http2
        self.header_timeout = server.header_timeout
        self.body_timeout = server.body_timeout
        self.keepalive_timeout = server.keepalive_timeout
        self.max_body_bytes = server.max_body_bytes
        self.max_streams = http2.max_concurrent_streams
        self.max_header_list_bytes = http2.max_header_list_bytes
        self.websocket = http2.websocket
        self.observer = shared.observer
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        self.transport: asyncio.Transport | None = None
        self.h2 = server_codec(http2)
        self.streams: dict[int, H2Stream] = {}
        self.blocked: set[H2Stream] = set()  # streams with bytes the windows hold back
        self.guard = FrameGuard(
            HPACK_BOMB_FACTOR * http2.max_header_list_bytes,
            control=TokenBucket(http2.control_frame_rate, http2.control_frame_burst),
            resets=TokenBucket(http2.reset_rate, http2.reset_burst),
        )
        self.state = OPEN
        self.last_stream_id = MAX_STREAM_ID  # streams above it are refused (after GOAWAY)
        self.client_ip = ""
        self.client_port = 0
        self.family: Family = "ipv4"
        self.ctx = ClientContext("", b"0", False)
        self.client_key = ""
        self.limits: ClientLimits | None = None
        self.counted = False
        self._timer = DeadlineTimer(self.loop, self._on_timer)
        self.arm = self._timer.arm
        self._receiving = False  # in data_received: writes wait for its one flush
        self._flush_due = False  # a write is scheduled for the end of this loop iteration
        self.now = 0.0
        self.write_paused_at = 0.0
        self._idle_since = 0.0
        self.served = False  # a stream was opened (idle limit: keepalive, not header)
        self._drain_at = 0.0

    # ================================================================ start
    def adopt(self, peer: Peer, limits: ClientLimits | None, data: bytes) -> None:
        """Take over ``peer``'s transport, its accounting, and the bytes it read.

        A cleartext connection is only HTTP/2 with server.h2c; without, the preface
        gets a SETTINGS frame and GOAWAY(HTTP_1_1_REQUIRED), and the connection closes.
        """
        transport = peer.transport
        if transport is None:
            return
        self.transport = transport
        self.client_ip = peer.client_ip
        self.client_port = peer.client_port
        self.family = peer.family
        self.ctx = peer.ctx
        self.client_key = peer.client_key
        self.limits = limits if peer.client_key else None
        self.counted = True
        connections = self.shared.connections
        connections.add(self)
        connections.discard(peer)
        transport.set_protocol(self)
        if not self.shared.config.server.h2c and transport.get_extra_info("ssl_object") is None:
            self.state = CLOSED
            self._write(refusal_frames())
            transport.close()
            return
        now = self.clock()
        self._idle_since = now
        self.arm(now + self.header_timeout)
        if data:
            self.data_received(data)
        else:
            self.write_pending()

    # ================================================================ reading
    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        now = self.now = self.clock()
        verdict = self.guard.feed(data, now)
        if verdict:
            self.fail(ENHANCE_YOUR_CALM, VIOLATIONS[verdict])
            return
        self._receiving = True
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:  # h2 queued a GOAWAY with the RFC's code
            self._receiving = False
            self.fail(None, str(exc), calm=exc.error_code == ENHANCE_YOUR_CALM)
            return
        try:
            for event in events:
                handler = HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
                    if self.state == CLOSED:
                        return
        except Exception:  # a bug must not take the worker's loop with it
            log.exception("HTTP/2 connection from %s failed", self.client_ip)
            self._receiving = False
            self.fail(INTERNAL_ERROR, "internal error")
            return
        finally:
            self._receiving = False
        self.write_pending()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost ends what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._timer.cancel()
        self._end_streams()
        if self.client_key and self.limits is not None:
            self.limits.connection_closed(self.client_key)
            self.client_key = ""
        if self.counted:
            self.counted = False
            self.shared.connection_closed(self)
            self.observer.connection_closed(self.family)

    def pause_writing(self) -> None:
        """The client does not read: stop reading it and every stream's upstream."""
        now = self.write_paused_at = self.clock()
        if self.transport is not None:
            self.transport.pause_reading()
        for stream in list(self.streams.values()):
            stream.check_upstream_pause()
        self.arm(now + self.body_timeout)

    def resume_writing(self) -> None:
        self.write_paused_at = 0.0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        for stream in list(self.streams.values()):
            stream.check_upstream_pause()

    # ============================================================ streams
    def count_reset(self) -> None:
        """A stream the client reset or made us reset: beyond http2.reset_rate, GOAWAY."""
        if self.state != CLOSED and not self.guard.resets.take(self.now or self.clock()):
            self.fail(ENHANCE_YOUR_CALM, "stream resets over http2.reset_rate")

    def refuse_stream(self, stream: H2Stream, detail: str) -> None:
        """A malformed frame on ``stream`` (RFC 9113 §8.1.1): reset it, counted."""
        log.info("malformed HTTP/2 request: %s", detail, extra={"client": self.client_ip})
        ex, stream.exchange = stream.exchange, None
        if ex is not None:
            ex.client_gone("client stream error")
        stream.reset(PROTOCOL_ERROR)
        self.count_reset()

    def reset_sid(self, sid: int, code: int) -> None:
        self.h2_call(self.h2.reset_stream, sid, code)

    def stream_finished(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.sid, None) is None:
            return
        self.blocked.discard(stream)
        if not self.streams:
            now = self.clock()
            self._idle_since = now
            if self.state == CLOSING:
                self._close_transport()
            elif self.state != CLOSED:
                self.arm(now + self.keepalive_timeout)

    def flush(self) -> None:
        """Write what h2 has queued once this loop iteration's reads are handled.

        Upstream reads of many streams arrive in one iteration: their frames go out
        with one write. (A client read writes at its end; see data_received.)
        """
        if not self._receiving and not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.write_pending()

    def write_pending(self) -> None:
        """Write everything h2 has queued, now, in one call."""
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    @staticmethod
    def h2_call(method: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(ProtocolError):  # already closed on h2's side
            method(*args)

    # ========================================================= shutting down
    def close_if_idle(self) -> bool:
        """Graceful shutdown: close now when idle, else the two-step GOAWAY (RFC 9113 §6.8)."""
        if self.state == CLOSED or self.transport is None:
            return False
        if not self.streams and not self.guard.block_started:
            self.close_now(NO_ERROR)
            return True
        if self.state == OPEN:
            self.state = DRAINING
            self.h2.ping(DRAIN_PING)
            self._write(goaway_frame(MAX_STREAM_ID) + self.h2.data_to_send())
            self._drain_at = self.clock() + DRAIN_PING_SECONDS
            self.arm(self._drain_at)
        return False

    def final_goaway(self) -> None:
        if self.state != DRAINING:
            return
        self.state = CLOSING
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self._write(self.h2.data_to_send() + goaway_frame(self.last_stream_id))
        if not self.streams:
            self._close_transport()

    def abort(self) -> None:
        """Shutdown grace ran out: end every stream and the connection now."""
        for stream in list(self.streams.values()):
            if stream.relay is not None:
                stream.relay.close("shutdown")
        if self.transport is not None:
            self.transport.abort()

    def fail(self, code: int | None, detail: str, *, calm: bool = False) -> None:
        """A connection error: GOAWAY with ``code`` (None: h2 queued one), then close.

        Counted as ``http2_flood`` when the code is ENHANCE_YOUR_CALM (``calm``: h2's).
        """
        log.info("HTTP/2 connection error from %s: %s", self.client_ip, detail)
        flood = calm or code == ENHANCE_YOUR_CALM
        self.observer.client_error("http2_flood" if flood else "http2_protocol_error")
        self.close_now(code)

    def close_now(self, code: int | None) -> None:
        """End every stream; GOAWAY with ``code`` unless None; write it and close."""
        if code is not None:
            self.h2_call(self.h2.close_connection, code)
        self.state = CLOSED
        self._timer.cancel()
        self._end_streams()
        self._close_transport()

    def _end_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for stream in streams:
            stream.connection_gone()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_transport(self) -> None:
        self._write(self.h2.data_to_send())
        if self.transport is not None:
            self.transport.close()

    # ================================================================ timers
    def _on_timer(self) -> None:
        if self.state == CLOSED:
            return
        now = self.clock()
        nxt: float | None = None
        started = self.guard.block_started
        if started:
            due = started + self.header_timeout
            if now >= due:
                self.fail(ENHANCE_YOUR_CALM, "header block not finished within header_timeout")
                return
            nxt = due
        if self.write_paused_at:
            due = self.write_paused_at + self.body_timeout
            if now >= due:
                log.info("HTTP/2 client %s stopped reading: closing", self.client_ip)
                self.close_now(None)
                return
            nxt = due if nxt is None else min(nxt, due)
        if self.state == DRAINING:
            if now >= self._drain_at:
                self.final_goaway()
            else:
                nxt = self._drain_at if nxt is None else min(nxt, self._drain_at)
        if self.streams:
            for stream in list(self.streams.values()):
                due_s = stream.next_deadline(now)
                if due_s is not None:
                    nxt = due_s if nxt is None else min(nxt, due_s)
        elif self.state != CLOSED:
            limit = self.keepalive_timeout if self.served else self.header_timeout
            due = self._idle_since + limit
            if now >= due:
                self.close_now(NO_ERROR)
                return
            nxt = due if nxt is None else min(nxt, due)
        self.flush()
        if nxt is not None and self.state != CLOSED:
            self.arm(nxt)
