"""One HTTP/1.1 connection to an upstream server: an asyncio.Protocol around a client codec.

Ownership: the pool owns idle connections and connects in progress; an
exchange owns the connection it borrowed until it gives it back
(``Pool.release``) or closes it. After a 101 the tunnel takes the transport
over (``transport.set_protocol``) and this object hears nothing more.
Whoever owns a connection is the one that closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, cast

from dsproxy.config import UpstreamServer
from dsproxy.errors import UpstreamError
from dsproxy.http.codec.base import ClientCodec, CodecFactory, Headers, ResponseHead

# Per-transport write buffer: above it the sender is paused (backpressure).
WRITE_HIGH_WATER_BYTES = 256 * 1024


class UpstreamOwner(Protocol):
    """The exchange that borrowed a connection: response events and flow control."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, trailers: Headers) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None: ...

    upstream_activity: float  # loop time of the last byte from the upstream

    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def flush(self) -> None: ...


class IdleKeeper(Protocol):
    """The pool, as seen by a connection nobody has borrowed."""

    def discard(self, conn: UpstreamConnection) -> None: ...
    def forget(self, conn: UpstreamConnection) -> None: ...
    def broken(self, conn: UpstreamConnection, error: UpstreamError) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream server, speaking HTTP/1.1 through a client codec."""

    def __init__(self, keeper: IdleKeeper, server: UpstreamServer, codec: CodecFactory) -> None:
        self.keeper = keeper
        self.server = server
        self.codec: ClientCodec = codec.client(self)
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.stale = False  # its address left the upstream name's answer
        self.peer = server.authority
        self.address = server.host
        self._clock = _no_clock

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self._clock = asyncio.get_running_loop().time
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        peer = transport.get_extra_info("peername")
        if peer:
            host = self.address = str(peer[0])
            self.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            # Bytes on an idle connection: the upstream broke framing; drop it.
            self.keeper.discard(self)
            return
        owner.upstream_activity = self._clock()
        try:
            self.codec.feed(data)
        except UpstreamError as exc:
            self._fail(exc)
        owner.flush()

    def eof_received(self) -> bool | None:
        owner = self.owner
        if owner is None:
            self.keeper.discard(self)
            return None
        try:
            self.codec.feed_eof()
        except UpstreamError as exc:
            self._fail(exc)
            return None
        finally:
            owner.flush()
        if self.owner is not None:
            # EOF while a response is still expected: the upstream reset us.
            self._fail(UpstreamError("upstream closed the connection", kind="reset"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.owner is not None:
            self._fail(UpstreamError(f"upstream connection lost: {exc or 'closed'}", kind="reset"))
        else:
            self.keeper.forget(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume_writing()

    # -- codec handler: delegate to the exchange ------------------------------
    def on_response_head(self, head: ResponseHead) -> None:
        if self.owner is not None:
            self.owner.on_response_head(head)

    def on_response_body(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.on_response_body(data)

    def on_response_end(self, trailers: Headers) -> None:
        if self.owner is not None:
            self.owner.on_response_end(trailers)

    # -- helpers ---------------------------------------------------------------
    def _fail(self, error: UpstreamError) -> None:
        owner, self.owner = self.owner, None
        self.close()
        if owner is not None:
            owner.upstream_failed(self, error)
        else:  # e.g. bytes behind a response already delivered: nobody to tell but the logs
            self.keeper.broken(self, error)

    def write(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    def write_pieces(self, pieces: Sequence[bytes]) -> None:
        """Write encoded pieces in order (one writev; none of them is copied)."""
        transport = self.transport
        if transport is not None and pieces:
            if len(pieces) == 1:
                transport.write(pieces[0])
            else:
                transport.writelines(pieces)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.owner = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.owner = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


def _no_clock() -> float:
    return 0.0  # before connection_made: nothing is read yet
