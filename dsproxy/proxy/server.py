"""One worker's proxy: its listeners, its upstream pools, its client connections.

``ProxyServer`` is the owner of every socket of a worker. Shutdown follows
uvicorn's order: stop accepting, tell connections to finish (idle ones close
now, busy ones after their response), wait up to the grace period, then abort
what is left (WebSocket tunnels included).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from dsproxy.config import Config
from dsproxy.http.codec import get_codec
from dsproxy.net.addr import HostPort
from dsproxy.net.listener import Listener, bind_all
from dsproxy.net.resolver import Resolver
from dsproxy.observe.records import Observer
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.limits import ClientLimits
from dsproxy.proxy.pool import DEFAULT_GROUP, PoolRegistry, UpstreamPool
from dsproxy.proxy.preamble import ProxyPreamble
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.tlsfront import TlsAcceptor, TlsFront

log = logging.getLogger("dsproxy.proxy.server")


class Serving(Protocol):
    """What is kept of a listener: an ``asyncio.Server``, or a ``TlsAcceptor``."""

    def is_serving(self) -> bool: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class ProxyServer:
    def __init__(
        self,
        config: Config,
        observer: Observer,
        *,
        resolver: Resolver | None = None,
        reuse_port: bool | None = None,
    ):
        self.config = config
        # SO_REUSEPORT lets several worker processes bind the same address; a
        # supervisor asks for it even for one worker, since a reload may add more.
        self._reuse_port = reuse_port
        self.observer = observer
        self.resolver = resolver or Resolver(config.upstream.resolve_interval)
        self.limits = ClientLimits(**limit_settings(config))
        self.shared = self._make_shared(config)
        self._retired: list[Shared] = []  # configurations replaced by a reload, still draining
        self._listeners: dict[HostPort, tuple[Listener, Serving]] = {}
        # TLS listeners (server.tls_listen) and the certificate they serve; ConfigError
        # here when there are TLS listeners and the certificate cannot be loaded.
        self._tls_listeners: dict[HostPort, tuple[Listener, Serving]] = {}
        self.tls = TlsFront(observer, lambda: self.shared)
        self.tls.start(config)

    def _make_shared(self, config: Config) -> Shared:
        codec = get_codec(config.server.parser)
        # One pool per route: its own servers, keep-alive, DNS refresh and failover.
        groups = {DEFAULT_GROUP: config.upstream}
        groups.update((route.name, route.upstream) for route in config.routes)
        pools = PoolRegistry(
            {
                name: UpstreamPool(upstream, codec, self.observer, self.resolver)
                for name, upstream in groups.items()
            }
        )
        return Shared(
            config=config,
            codec=codec,
            pools=pools,
            router=build_router(config, pools),
            observer=self.observer,
            limits=self.limits,
        )

    def _factory(self) -> asyncio.Protocol:
        shared = self.shared
        if shared.config.server.proxy_protocol:  # read per accept: a reload turns it on/off
            return ProxyPreamble(shared)
        return ClientConnection(shared)

    @property
    def reuse_port(self) -> bool:
        if self._reuse_port is not None:
            return self._reuse_port
        return self.config.server.workers > 1

    async def start(self, listeners: list[Listener] | None = None) -> None:
        """Bind (or adopt) the listen sockets, bind the TLS ones, and start accepting."""
        server = self.config.server
        if listeners is None:
            listeners = bind_all(
                server.listen, ipv6only=server.ipv6only, reuse_port=self.reuse_port
            )
        try:
            tls = bind_all(
                server.tls_listen,
                ipv6only=server.ipv6only,
                reuse_port=self.reuse_port,
                key="server.tls_listen",
            )
        except BaseException:
            for listener in listeners:
                listener.sock.close()
            raise
        try:
            for listener in listeners:
                await self._serve(listener)
            for listener in tls:
                await self._serve(listener, tls=True)
        except BaseException:
            for listener in listeners + tls:
                listener.sock.close()
            raise

    async def _serve(self, listener: Listener, *, tls: bool = False) -> None:
        server: Serving
        if tls:
            server = TlsAcceptor(listener.sock, self.tls.accept)
        else:
            server = await asyncio.get_running_loop().create_server(
                self._factory, sock=listener.sock
            )
        (self._tls_listeners if tls else self._listeners)[listener.address] = (listener, server)
        kind = (
            "dual-stack IPv4+IPv6"
            if listener.dual_stack
            else ("IPv6 only" if listener.sock.family.name == "AF_INET6" else "IPv4")
        )
        log.info("listening on %s (%s%s)", listener.bound, kind, ", TLS" if tls else "")

    @property
    def addresses(self) -> list[HostPort]:
        """The bound cleartext addresses (port 0 resolved to the port the OS chose)."""
        return [listener.bound for listener, _ in self._listeners.values()]

    @property
    def tls_addresses(self) -> list[HostPort]:
        """The bound TLS addresses (port 0 resolved)."""
        return [listener.bound for listener, _ in self._tls_listeners.values()]

    def _servers(self) -> list[Serving]:
        return [server for _, server in [*self._listeners.values(), *self._tls_listeners.values()]]

    @property
    def connection_count(self) -> int:
        return len(self.shared.connections) + sum(len(s.connections) for s in self._retired)

    async def reload(self, config: Config) -> None:
        """New connections use ``config``; open ones finish on the old one.

        Listen addresses that did not change keep their sockets, so no
        connection is refused while reloading. New addresses are bound before
        old ones close; when one cannot be bound, every listener stays as it
        was and ``ListenError`` says why (the rest of the config still applies).

        The TLS certificate is loaded again: one that cannot be loaded keeps the one
        in force (logged); with no certificate at all the TLS listeners stay as they
        were. Open TLS connections keep their sessions either way.
        """
        old = self.shared
        self.config = config
        self.resolver.interval = config.upstream.resolve_interval
        self.limits.configure(**limit_settings(config))
        self.shared = self._make_shared(config)
        old.successor = self.shared
        old.draining = True
        old.pools.close()
        for conn in list(old.connections):
            conn.close_if_idle()
        self._retired.append(old)
        tls_ok = self.tls.reload(config)
        await self._rebind(config, tls_ok)
        self._retired = [s for s in self._retired if s.connections]

    async def _rebind(self, config: Config, tls_ok: bool) -> None:
        server = config.server
        wanted = server.listen
        wanted_tls = server.tls_listen if tls_ok else tuple(self._tls_listeners)
        added = tuple(a for a in wanted if a not in self._listeners)
        added_tls = tuple(a for a in wanted_tls if a not in self._tls_listeners)
        # Bind everything new first: all or nothing, and nothing old is closed yet.
        v6only, reuse = server.ipv6only, self.reuse_port
        fresh = bind_all(added, ipv6only=v6only, reuse_port=reuse)
        try:
            fresh_tls = bind_all(
                added_tls, ipv6only=v6only, reuse_port=reuse, key="server.tls_listen"
            )
        except BaseException:
            for listener in fresh:
                listener.sock.close()
            raise
        try:
            for listener in fresh:
                await self._serve(listener)
            for listener in fresh_tls:
                await self._serve(listener, tls=True)
        except BaseException:
            for listeners, table in ((fresh, self._listeners), (fresh_tls, self._tls_listeners)):
                for listener in listeners:
                    entry = table.pop(listener.address, None)
                    if entry is not None:
                        entry[1].close()
                    else:
                        listener.sock.close()
            raise
        for table, keep in ((self._listeners, wanted), (self._tls_listeners, wanted_tls)):
            for address in [a for a in table if a not in keep]:
                listener, stopped = table.pop(address)
                stopped.close()
                log.info("stopped listening on %s", listener.bound)

    @property
    def listening(self) -> bool:
        """True while at least one listener accepts connections."""
        return any(server.is_serving() for server in self._servers())

    def stop_accepting(self) -> None:
        for server in self._servers():
            server.close()

    def abort(self) -> None:
        """Close every connection now, tunnels and borrowed upstream connections too."""
        for shared in (self.shared, *self._retired):
            for conn in list(shared.connections):
                conn.abort()
            shared.pools.abort_busy()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight work finish for ``grace`` seconds, then abort."""
        self.stop_accepting()
        everything = [self.shared, *self._retired]
        for shared in everything:
            shared.draining = True
            shared.pools.close()
            for conn in list(shared.connections):
                conn.close_if_idle()
        waits: list[asyncio.Task[bool]] = []
        loop = asyncio.get_running_loop()
        for shared in everything:
            shared.all_closed = asyncio.Event()
            if not shared.connections:
                shared.all_closed.set()
            waits.append(loop.create_task(shared.all_closed.wait()))
        try:
            # asyncio.wait, not wait_for(gather): cancelling this leaves no orphan future.
            await asyncio.wait(waits, timeout=grace)
        finally:
            for wait in waits:
                wait.cancel()
        left = sum(len(s.connections) for s in everything)
        if left:
            log.warning("shutdown grace of %.0fs ran out: closing %d connections", grace, left)
        self.abort()
        for server in self._servers():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        self._listeners.clear()
        self._tls_listeners.clear()


def limit_settings(config: Config) -> dict[str, Any]:
    server = config.server
    return {
        "max_connections": server.max_connections_per_ip,
        "rate": server.rate_limit,
        "burst": server.rate_limit_burst,
        "ipv6_prefix": server.ipv6_client_prefix,
    }
