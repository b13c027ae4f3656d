"""Upstream side: one protocol per upstream connection, and the keep-alive pool.

Ownership: the pool owns idle connections and connects in progress; an
exchange (a client connection with a request in flight) owns the connection
it borrowed until it gives it back with ``release`` or closes it. After a 101
the tunnel owns it. Whoever owns a connection is the one that closes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

from dsproxy.config import UpstreamConfig, UpstreamServer
from dsproxy.errors import UpstreamError
from dsproxy.http.codec.base import ClientCodec, CodecFactory, Headers, ResponseHead
from dsproxy.observe.records import Observer

if TYPE_CHECKING:
    from dsproxy.net.resolver import Resolver
    from dsproxy.proxy.tunnel import Tunnel

log = logging.getLogger("dsproxy.proxy.upstream")

# A server that failed to connect is skipped this long (passive health check).
FAILED_SERVER_BACKOFF_SECONDS = 5.0
# RFC 8305 §5: the recommended delay between connection attempts.
HAPPY_EYEBALLS_DELAY_SECONDS = 0.25
# How often idle pooled connections are checked for expiry.
POOL_SWEEP_SECONDS = 1.0
# Per-transport write buffer: above it the sender is paused (backpressure).
WRITE_HIGH_WATER_BYTES = 256 * 1024


class UpstreamOwner(Protocol):
    """The exchange that borrowed a connection (implemented by the downstream protocol)."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, trailers: Headers) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection, error: UpstreamError) -> None: ...
    def upstream_data_seen(self) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream server, speaking HTTP/1.1 through a client codec."""

    def __init__(self, pool: UpstreamPool, server: UpstreamServer, codec: CodecFactory) -> None:
        self.pool = pool
        self.server = server
        self.codec: ClientCodec = codec.client(self)
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.tunnel: Tunnel | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.stale = False  # its address left the upstream name's answer
        self.peer = server.authority
        self.address = server.host

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        peer = transport.get_extra_info("peername")
        if peer:
            host = self.address = str(peer[0])
            self.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_data(data)
            return
        owner = self.owner
        if owner is None:
            # Bytes on an idle connection: the upstream broke framing; drop it.
            self.pool.discard(self)
            return
        owner.upstream_data_seen()
        try:
            self.codec.feed(data)
        except UpstreamError as exc:
            self._fail(exc)
        owner.flush()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.upstream_eof()
        if self.owner is None:
            self.pool.discard(self)
            return None
        owner = self.owner
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
        if self.tunnel is not None:
            self.tunnel.upstream_lost()
            return
        if self.owner is not None:
            self._fail(UpstreamError(f"upstream connection lost: {exc or 'closed'}", kind="reset"))
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_pause_writing()
        elif self.owner is not None:
            self.owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_resume_writing()
        elif self.owner is not None:
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
            self.pool.broken(self, error)

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


class ConnectWaiter(Protocol):
    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None: ...


class UpstreamPool:
    """Keep-alive pool of upstream connections for one worker (LIFO reuse, idle expiry)."""

    def __init__(
        self,
        config: UpstreamConfig,
        codec: CodecFactory,
        observer: Observer,
        resolver: Resolver,
    ) -> None:
        self.config = config
        self.codec = codec
        self.observer = observer
        self.resolver = resolver
        self._idle: deque[UpstreamConnection] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        self._busy: set[UpstreamConnection] = set()
        self._rr = 0
        self._down_until: dict[UpstreamServer, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._named = [s for s in config.servers if not _is_ip_literal(s.host)]
        self.closing = False

    # -- lending -----------------------------------------------------------------
    def acquire(self) -> UpstreamConnection | None:
        """An idle live connection, most recently used first, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                self.observer.pool_idle(len(idle))
                return conn
        return None

    def connect(self, waiter: ConnectWaiter, *, exclude: UpstreamServer | None = None) -> None:
        """Open a new connection in the background and hand it to ``waiter``."""
        server = self._pick_server(exclude)
        loop = asyncio.get_running_loop()
        if self._refresher is None and self._named and self.config.resolve_interval > 0:
            self._refresher = loop.create_task(self._refresh_addresses())
        task = loop.create_task(self._connect(server, waiter))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _pick_server(
        self, exclude: UpstreamServer | None, avoid: set[UpstreamServer] | None = None
    ) -> UpstreamServer:
        """Round-robin over the servers, skipping those marked down (or in ``avoid``)."""
        servers = self.config.servers
        if len(servers) == 1:
            return servers[0]
        now = time.monotonic()
        for _ in range(len(servers)):
            self._rr = (self._rr + 1) % len(servers)
            server = servers[self._rr]
            if avoid and server in avoid:
                continue
            if server != exclude and self._down_until.get(server, 0.0) <= now:
                return server
        if avoid:
            for server in servers:
                if server not in avoid:
                    return server
        # Every server is marked down: try the next one anyway rather than fail fast.
        self._rr = (self._rr + 1) % len(servers)
        return servers[self._rr]

    async def _connect(self, first: UpstreamServer, waiter: ConnectWaiter) -> None:
        """Connect to ``first``; with several servers, fail over to the others.

        Nothing was sent on a connection that failed to open, so trying the next
        server is safe for every method (nginx's ``proxy_next_upstream error``).
        """
        loop = asyncio.get_running_loop()
        server = first
        tried: set[UpstreamServer] = set()
        while True:
            tried.add(server)
            started = loop.time()
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    addresses = await self.resolver.resolve(server)
                    conn = await self._open(loop, server, addresses)
                break
            except (TimeoutError, OSError) as exc:
                self._mark_down(server)
                detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                error = UpstreamError(f"connect to {server.authority}: {detail}", kind="connect")
                untried = [s for s in self.config.servers if s not in tried]
                if not untried or self.closing:
                    waiter.upstream_failed(None, error)
                    return
                log.warning("%s; trying the next server", error.detail)
                self.observer.upstream_error("connect")
                server = self._pick_server(exclude=None, avoid=tried)
        self._down_until.pop(server, None)
        self.observer.upstream_connected(loop.time() - started)
        if self.closing:
            conn.close()
            waiter.upstream_failed(None, UpstreamError("shutting down", kind="connect"))
            return
        self._busy.add(conn)
        waiter.upstream_ready(conn, False)

    async def _open(
        self, loop: asyncio.AbstractEventLoop, server: UpstreamServer, addresses: list[str]
    ) -> UpstreamConnection:
        """Connect to the first address that answers: RFC 8305 Happy Eyeballs.

        Attempts start HAPPY_EYEBALLS_DELAY_SECONDS apart (at once when the
        previous one failed); the first to connect wins, the rest are closed.
        """

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, server, self.codec)

        if len(addresses) == 1:
            _, conn = await loop.create_connection(factory, addresses[0], server.port)
            return conn
        pending: set[asyncio.Task[tuple[asyncio.Transport, UpstreamConnection]]] = set()
        errors: list[str] = []
        remaining = list(addresses)
        try:
            while remaining or pending:
                if remaining:
                    address = remaining.pop(0)
                    pending.add(
                        loop.create_task(loop.create_connection(factory, address, server.port))
                    )
                done, _ = await asyncio.wait(
                    pending,
                    timeout=HAPPY_EYEBALLS_DELAY_SECONDS if remaining else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    pending.discard(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result()[1]
                    errors.append(str(exc))
            raise OSError("; ".join(errors) or "no address to connect to")
        finally:
            for task in pending:
                task.cancel()
                task.add_done_callback(_close_if_connected)

    async def _refresh_addresses(self) -> None:
        """Re-resolve upstream names every resolve_interval while the pool lives.

        Pooled connections would otherwise keep traffic on an address the name
        no longer has (a gateway Service or pod that moved): idle ones to a
        dropped address are closed, busy ones are not taken back.
        """
        while not self.closing:
            await asyncio.sleep(self.config.resolve_interval)
            for server in self._named:
                try:
                    addresses = set(await self.resolver.resolve(server))
                except OSError:
                    continue  # the resolver keeps (and logs) the last good answer
                self._drop_stale(server, addresses)

    def _drop_stale(self, server: UpstreamServer, addresses: set[str]) -> None:
        kept: deque[UpstreamConnection] = deque()
        for conn in self._idle:
            if conn.server == server and conn.address not in addresses:
                conn.close()
            else:
                kept.append(conn)
        self._idle = kept
        for conn in self._busy:
            if conn.server == server and conn.address not in addresses:
                conn.stale = True

    def _mark_down(self, server: UpstreamServer) -> None:
        if len(self.config.servers) > 1:
            self._down_until[server] = time.monotonic() + FAILED_SERVER_BACKOFF_SECONDS

    # -- returning ---------------------------------------------------------------
    def release(self, conn: UpstreamConnection, *, used: bool = True) -> None:
        """Take back a connection whose exchange completed cleanly (or was never used)."""
        self._busy.discard(conn)
        conn.owner = None
        if used:
            conn.requests += 1
        if (
            self.closing
            or conn.closed
            or conn.stale
            or conn.requests >= self.config.keepalive_requests
            or len(self._idle) >= self.config.keepalive
        ):
            conn.close()
            return
        try:
            if used:
                conn.codec.start_next_cycle()
        except UpstreamError as exc:  # bytes behind the response: never reuse
            conn.close()
            self.broken(conn, exc)
            return
        except Exception:  # the codec disagrees that both messages are done
            conn.close()
            return
        transport = conn.transport
        if transport is not None and not transport.is_reading():
            # Reading may have been paused for a slow client; an idle
            # connection must read so that the upstream's FIN is noticed.
            transport.resume_reading()
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self.observer.pool_idle(len(self._idle))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(POOL_SWEEP_SECONDS, self._sweep)

    def broken(self, conn: UpstreamConnection, error: UpstreamError) -> None:
        """A connection no request owns broke the protocol (it is closed): count and log it."""
        self.observer.upstream_error(error.kind)
        log.warning("upstream %s: %s; connection closed", conn.peer, error.detail)

    def discard(self, conn: UpstreamConnection) -> None:
        """An idle connection went bad (EOF, stray bytes): close and forget it."""
        conn.close()
        self.forget(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self.observer.pool_idle(len(self._idle))

    def detach(self, conn: UpstreamConnection) -> None:
        """The connection leaves the pool's books for good (closed, or now a tunnel)."""
        self._busy.discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self.config.keepalive_timeout
        idle = self._idle
        # Oldest first: connections are appended when released.
        while idle and idle[0].idle_since <= deadline:
            idle.popleft().close()
        self.observer.pool_idle(len(idle))
        if idle:
            self._sweeper = asyncio.get_running_loop().call_later(POOL_SWEEP_SECONDS, self._sweep)

    def close(self) -> None:
        """Close idle connections and cancel connects; busy ones close with their exchange."""
        self.closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
        for task in list(self._connecting):
            task.cancel()
        self.observer.pool_idle(0)

    def abort_busy(self) -> None:
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()


def _close_if_connected(task: asyncio.Task[tuple[asyncio.Transport, UpstreamConnection]]) -> None:
    """A Happy Eyeballs loser that connected anyway must not leak its socket."""
    if not task.cancelled() and task.exception() is None:
        task.result()[1].close()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
