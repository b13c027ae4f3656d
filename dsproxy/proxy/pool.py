"""Keep-alive pools of upstream connections, one per upstream group, behind one interface.

An exchange sees a pool only through ``Pool``: ``acquire`` lends an idle
connection or starts opening one for the waiter, ``release`` takes a clean
connection back, ``detach`` forgets one that was closed or became a tunnel.
``PoolRegistry`` keeps one ``UpstreamPool`` per upstream group (route); one
group today, the default route.

Server choice is per request: with several servers, each ``acquire`` goes to
the next server in turn (skipping one that failed to connect within
FAILED_SERVER_BACKOFF_SECONDS) and reuses an idle connection to that server
when there is one, so sequential traffic is spread and not stuck on the
connection last returned. Idle connections are reused most recently used
first within a server and expire after ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol

from dsproxy.config import UpstreamConfig, UpstreamServer
from dsproxy.errors import UpstreamError
from dsproxy.http.codec.base import CodecFactory
from dsproxy.net.happy_eyeballs import connect_first
from dsproxy.net.resolver import Resolver
from dsproxy.observe.records import Observer
from dsproxy.proxy.upstream import UpstreamConnection

log = logging.getLogger("dsproxy.proxy.pool")

# A server that failed to connect is skipped this long (passive health check).
FAILED_SERVER_BACKOFF_SECONDS = 5.0
# How often idle pooled connections are checked for expiry.
POOL_SWEEP_SECONDS = 1.0
# The pool key of the default route ([upstream]).
DEFAULT_GROUP = "default"

ConnectionFactory = Callable[[], UpstreamConnection]
# loop.create_connection's shape: tests pass a fake one to drive Happy Eyeballs without sockets.
Connector = Callable[
    [ConnectionFactory, str, int], Awaitable[tuple[asyncio.BaseTransport, UpstreamConnection]]
]


class ConnectWaiter(Protocol):
    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None: ...


class Pool(Protocol):
    """What an exchange needs from the pool of its upstream group."""

    def acquire(self, waiter: ConnectWaiter) -> UpstreamConnection | None:
        """An idle connection now, or None: a new one is being opened for ``waiter``."""
        ...

    def connect(self, waiter: ConnectWaiter) -> None:
        """Open a new connection for ``waiter`` (a retry: never an idle one)."""
        ...

    def release(self, conn: UpstreamConnection, *, used: bool = True) -> None: ...
    def detach(self, conn: UpstreamConnection) -> None: ...


class ManagedPool(Pool, Protocol):
    """A pool as its worker sees it: lent out by exchanges, closed at reload and shutdown."""

    def close(self) -> None: ...
    def abort_busy(self) -> None: ...


class UpstreamPool:
    """Keep-alive pool of one upstream group for one worker."""

    def __init__(
        self,
        config: UpstreamConfig,
        codec: CodecFactory,
        observer: Observer,
        resolver: Resolver,
        *,
        connector: Connector | None = None,
    ) -> None:
        self.config = config
        self.codec = codec
        self.observer = observer
        self.resolver = resolver
        self._connector = connector
        servers = config.servers
        self._single = servers[0] if len(servers) == 1 else None
        self._idle: dict[UpstreamServer, deque[UpstreamConnection]] = {s: deque() for s in servers}
        # The first server's idle deque, used directly when it is the only one (no hashing
        # a server per request).
        self._single_idle = self._idle[servers[0]]
        self._idle_count = 0
        self._connecting: set[asyncio.Task[None]] = set()
        self._busy: set[UpstreamConnection] = set()
        self._rr = -1
        self._down_until: dict[UpstreamServer, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._named = [s for s in servers if not _is_ip_literal(s.host)]
        self.closing = False

    @property
    def idle_count(self) -> int:
        return self._idle_count

    # -- lending -----------------------------------------------------------------
    def acquire(self, waiter: ConnectWaiter) -> UpstreamConnection | None:
        server = self._single
        if server is None:
            server = self._pick_server()
            idle = self._idle[server]
        else:
            idle = self._single_idle
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                self.observer.pool_idle(self._idle_count)
                return conn
        self._start_connect(server, waiter)
        return None

    def connect(self, waiter: ConnectWaiter) -> None:
        self._start_connect(self._single or self._pick_server(), waiter)

    def _start_connect(self, server: UpstreamServer, waiter: ConnectWaiter) -> None:
        loop = asyncio.get_running_loop()
        if self._refresher is None and self._named and self.config.resolve_interval > 0:
            self._refresher = loop.create_task(self._refresh_addresses())
        task = loop.create_task(self._connect(server, waiter))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _pick_server(self, avoid: set[UpstreamServer] | None = None) -> UpstreamServer:
        """The next server in turn, skipping those marked down (or in ``avoid``)."""
        servers = self.config.servers
        now = time.monotonic()
        for _ in range(len(servers)):
            self._rr = (self._rr + 1) % len(servers)
            server = servers[self._rr]
            if avoid and server in avoid:
                continue
            if self._down_until.get(server, 0.0) <= now:
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
                    addresses = await self.resolver.resolve(server, self.config.resolve_interval)
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
                server = self._pick_server(avoid=tried)
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
        """Connect to the first of the server's addresses that answers (Happy Eyeballs)."""
        connect: Connector = self._connector or loop.create_connection

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, server, self.codec)

        async def attempt(address: str) -> UpstreamConnection:
            _, conn = await connect(factory, address, server.port)
            return conn

        return await connect_first(attempt, addresses, discard=UpstreamConnection.close)

    async def _refresh_addresses(self) -> None:
        """Re-resolve upstream names every resolve_interval while the pool lives.

        Pooled connections would otherwise keep traffic on an address the name
        no longer has (a gateway Service or pod that moved): idle ones to a
        dropped address are closed, busy ones are not taken back.
        """
        interval = self.config.resolve_interval
        while not self.closing:
            await asyncio.sleep(interval)
            for server in self._named:
                try:
                    addresses = set(await self.resolver.resolve(server, interval))
                except OSError:
                    continue  # the resolver keeps (and logs) the last good answer
                self._drop_stale(server, addresses)

    def _drop_stale(self, server: UpstreamServer, addresses: set[str]) -> None:
        kept: deque[UpstreamConnection] = deque()
        for conn in self._idle[server]:
            if conn.address not in addresses:
                conn.close()
                self._idle_count -= 1
            else:
                kept.append(conn)
        self._idle[server] = kept
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
            or self._idle_count >= self.config.keepalive
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
        idle = self._single_idle if self._single is not None else self._idle[conn.server]
        idle.append(conn)
        self._idle_count += 1
        self.observer.pool_idle(self._idle_count)
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
            self._idle[conn.server].remove(conn)
        except ValueError:
            return
        self._idle_count -= 1
        self.observer.pool_idle(self._idle_count)

    def detach(self, conn: UpstreamConnection) -> None:
        """The connection leaves the pool's books for good (closed, or now a tunnel)."""
        self._busy.discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self.config.keepalive_timeout
        for idle in self._idle.values():
            # Oldest first: connections are appended when released.
            while idle and idle[0].idle_since <= deadline:
                idle.popleft().close()
                self._idle_count -= 1
        self.observer.pool_idle(self._idle_count)
        if self._idle_count:
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
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle_count = 0
        for task in list(self._connecting):
            task.cancel()
        self.observer.pool_idle(0)

    def abort_busy(self) -> None:
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()


class PoolRegistry:
    """The pools of one worker's configuration, keyed by upstream group."""

    def __init__(self, pools: Mapping[str, ManagedPool]) -> None:
        self._pools = dict(pools)

    def get(self, group: str) -> ManagedPool:
        return self._pools[group]

    def __iter__(self) -> Iterator[ManagedPool]:
        return iter(self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def abort_busy(self) -> None:
        for pool in self._pools.values():
            pool.abort_busy()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
