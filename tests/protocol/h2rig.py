"""A rig for the HTTP/2 protocol tests: the real connection objects, fake transports, an h2 peer.

A ``ClientConnection`` on a fake transport receives the HTTP/2 preface (h2c)
and hands over to the ``Http2Connection``; the test's ``H2Peer`` plays the
client. Upstream connections are real ``UpstreamConnection`` objects on fake
transports, lent by a fake pool. Everything runs inside an event loop (the
connection's timer and its end-of-iteration flush need one): ``await
rig.settle()`` lets scheduled callbacks run and moves bytes both ways.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

from dsproxy.config import Config, Http2Config, ServerConfig, UpstreamConfig, UpstreamServer
from dsproxy.http.codec import get_codec
from dsproxy.net.addr import HostPort
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.h2connection import Http2Connection
from dsproxy.proxy.pool import PoolRegistry
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.upstream import UpstreamConnection
from tests.conftest import RecordingObserver
from tests.h2client import H2Peer
from tests.protocol.test_connection_fake import FakePool, FakeTransport

SERVER = UpstreamServer("10.0.0.9", 18080)


class H2Rig:
    def __init__(
        self, *, codec: str = "h11", http2: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None, peer: dict[str, Any] | None = None,
        upstream: dict[str, Any] | None = None, upstreams: int = 4,
    ) -> None:  # fmt: skip
        config = Config(
            server=replace(
                ServerConfig(listen=(HostPort("::", 16980),), h2c=True), **(server or {})
            ),
            upstream=replace(UpstreamConfig(servers=(SERVER,)), **(upstream or {})),
            http2=replace(Http2Config(), **(http2 or {})),
        )
        self.codec = get_codec(codec)
        self.pool = FakePool()
        self.observer = RecordingObserver()
        pools = PoolRegistry({"default": self.pool})
        self.shared = Shared(
            config=config,
            codec=self.codec,
            pools=pools,
            router=build_router(config, pools),
            observer=self.observer,
        )
        self.client = FakeTransport(("::ffff:192.0.2.10", 50000, 0, 0), ("::", 16980, 0, 0))
        self.upstreams: list[tuple[UpstreamConnection, FakeTransport]] = []
        for _ in range(upstreams):
            self.add_upstream()
        first = ClientConnection(self.shared)
        first.connection_made(cast(asyncio.Transport, self.client))
        self.peer = H2Peer(**(peer or {}))
        first.data_received(self.peer.outgoing())
        proto = self.client.protocol
        assert isinstance(proto, Http2Connection), "the preface did not hand over to HTTP/2"
        self.proto: Http2Connection = proto
        self.pump()

    def add_upstream(self) -> tuple[UpstreamConnection, FakeTransport]:
        conn = UpstreamConnection(self.pool, SERVER, self.codec)
        transport = FakeTransport(("10.0.0.9", 18080), ("10.0.0.1", 40000 + len(self.upstreams)))
        conn.connection_made(cast(asyncio.Transport, transport))
        self.pool.idle.insert(0, conn)  # lent in the order made
        self.upstreams.append((conn, transport))
        return conn, transport

    def upstream_of(self, index: int) -> tuple[UpstreamConnection, FakeTransport]:
        """The ``index``-th upstream connection lent (0: the first request's)."""
        return self.upstreams[index]

    def send(self, data: bytes | None = None) -> None:
        """Deliver what the peer queued (or ``data``) to the proxy."""
        out = self.peer.outgoing() if data is None else data
        if out and not self.client.closed:
            self.proto.data_received(out)

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything more to say."""
        for _ in range(50):
            moved = False
            out = self.peer.outgoing()
            if out and not self.client.closed:
                self.proto.data_received(out)
                moved = True
            back = self.client.take()
            if back:
                self.peer.feed(back)
                moved = True
            if not moved:
                return

    async def settle(self, seconds: float = 0.0) -> None:
        """Let the loop run (scheduled flushes, timers), then pump."""
        await asyncio.sleep(seconds)
        await asyncio.sleep(0)
        self.pump()

    def writes(self) -> int:
        return len([c for c in self.client.calls if c in ("write", "writelines")])


def http_response(body: bytes = b"hello", *, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def upstream_request(transport: FakeTransport) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(request line, fields lower-cased, rest) of what the proxy wrote upstream."""
    head, _, rest = transport.take().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields, rest
