"""The WebSocket tunnel: after a 101, raw bytes both ways until either side ends.

The switch is a protocol swap: the tunnel installs one ``TunnelEnd`` protocol
on each transport (``transport.set_protocol``, as uvicorn does on upgrade), so
neither the client connection nor the upstream connection hears another
callback, and no callback has to ask "am I a tunnel now?".

The tunnel owns both transports from the switch on. Flow control is
symmetric: when one side's write buffer passes its high-water mark the other
side stops reading until it drains. A FIN is passed on (half-close) and the
tunnel ends when both directions are done or either side is lost; a TLS client
connection cannot be half-closed, so a FIN from either side of it ends the tunnel. An idle
timer (websocket.idle_timeout) closes sessions that move no bytes either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dsproxy.observe.records import TunnelRecord


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what it reads is written to the other side."""

    __slots__ = ("tunnel", "transport", "peer", "name", "eof", "moved")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, name: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: TunnelEnd | None = None
        self.name = name  # "client" | "upstream": the close reason when this side ends
        self.eof = False
        self.moved = 0  # bytes read from this side

    def data_received(self, data: bytes) -> None:
        self.moved += len(data)
        self.tunnel.last_activity = time.monotonic()
        peer = self.peer
        if peer is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.eof or not peer.transport.can_write_eof():
            # Both directions are done, or the peer cannot be half-closed (TLS): the end.
            self.tunnel.close(f"{self.name}_closed")
        else:
            peer.transport.write_eof()
        # Keep the transport open: the other direction may still flow. A TLS transport
        # cannot stay half-open (its close_notify ends both ways; the loop closes it).
        return self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close(f"{self.name}_closed")

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.tunnel.closed:
            self.peer.transport.resume_reading()


class Tunnel:
    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float,
        record: TunnelRecord,
        on_close: Callable[[Tunnel], None],
    ) -> None:
        self.client = TunnelEnd(self, client, "client")
        self.upstream = TunnelEnd(self, upstream, "upstream")
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.idle_timeout = idle_timeout
        self.record = record
        self._on_close = on_close
        self._started = time.monotonic()
        self.last_activity = self._started
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def start(self, to_client: bytes, to_upstream: bytes) -> None:
        """Take both transports over; deliver the bytes that arrived behind each handshake head."""
        self.client.transport.set_protocol(self.client)
        self.upstream.transport.set_protocol(self.upstream)
        if self.idle_timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.idle_timeout, self._check_idle)
        if to_client:
            self.upstream.data_received(to_client)
        if to_upstream:
            self.client.data_received(to_upstream)

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
        """End the session: both transports are closed (buffered bytes are flushed)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.client.transport.close()
        self.upstream.transport.close()
        record = self.record
        record.close_reason = reason
        record.duration = time.monotonic() - self._started
        record.bytes_from_client = self.client.moved
        record.bytes_to_client = self.upstream.moved
        self._on_close(self)

    def abort(self, reason: str) -> None:
        """End at once without flushing (shutdown grace ran out)."""
        if not self.closed:
            self.client.transport.abort()
            self.upstream.transport.abort()
            self.close(reason)
