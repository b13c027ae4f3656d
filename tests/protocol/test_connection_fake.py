"""Protocol tier: ClientConnection driven through a fake transport and a fake pool.

No sockets: bytes go in through ``data_received``; what the proxy writes is
read back from the recording transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from dsproxy.config import Config, ServerConfig, UpstreamConfig, UpstreamServer
from dsproxy.errors import UpstreamError
from dsproxy.http.codec import get_codec, httptools_available
from dsproxy.http.codec.base import CodecFactory
from dsproxy.net.addr import HostPort
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.pool import ConnectWaiter, PoolRegistry
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.upstream import UpstreamConnection
from tests.conftest import RecordingObserver

SERVER = UpstreamServer("10.0.0.9", 18080)


class FakeTransport:
    """Implements the asyncio.Transport calls the proxy makes, recording each one."""

    def __init__(self, peer: tuple[Any, ...], sock: tuple[Any, ...]) -> None:
        self.extra: dict[str, Any] = {"peername": peer, "sockname": sock}
        self.written = bytearray()
        self.calls: list[str] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.eof_written = False
        self.eof_capable = True  # False: a TLS transport (no half-close)
        self.protocol: asyncio.BaseProtocol | None = None  # set by set_protocol only

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.calls.append("write")
        self.written += data

    def writelines(self, chunks: Any) -> None:
        self.calls.append("writelines")
        for chunk in chunks:
            self.written += chunk

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closed = True
        self.aborted = True

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.calls.append("set_write_buffer_limits")

    def can_write_eof(self) -> bool:
        return self.eof_capable

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof_written = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.calls.append("set_protocol")
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class FakePool:
    """Lends pre-made upstream connections; records what comes back."""

    def __init__(self) -> None:
        self.idle: list[UpstreamConnection] = []
        self.waiting: list[ConnectWaiter] = []
        self.released: list[UpstreamConnection] = []
        self.detached: list[UpstreamConnection] = []
        self.broken_errors: list[UpstreamError] = []

    def acquire(self, waiter: ConnectWaiter) -> UpstreamConnection | None:
        if self.idle:
            return self.idle.pop()
        self.waiting.append(waiter)
        return None

    def connect(self, waiter: ConnectWaiter) -> None:
        self.waiting.append(waiter)

    def release(self, conn: UpstreamConnection, *, used: bool = True) -> None:
        self.released.append(conn)
        conn.owner = None

    def detach(self, conn: UpstreamConnection) -> None:
        self.detached.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        pass

    def broken(self, conn: UpstreamConnection, error: UpstreamError) -> None:
        self.broken_errors.append(error)

    def close(self) -> None:
        pass

    def abort_busy(self) -> None:
        pass


class Rig:
    def __init__(self, codec: CodecFactory, *, tls: bool = False, **server: Any) -> None:
        config = Config(
            server=ServerConfig(listen=(HostPort("::", 16980),), **server),
            upstream=UpstreamConfig(servers=(SERVER,)),
        )
        self.codec = codec
        self.pool = FakePool()
        self.observer = RecordingObserver()
        pools = PoolRegistry({"default": self.pool})
        self.shared = Shared(
            config=config,
            codec=codec,
            pools=pools,
            router=build_router(config, pools),
            observer=self.observer,
        )
        self.proto = ClientConnection(self.shared)
        self.client = FakeTransport(("::ffff:192.0.2.10", 50000, 0, 0), ("::", 16980, 0, 0))
        if tls:  # what a TLS listener hands over: the transport of a finished handshake
            self.client.extra["ssl_object"] = object()
            self.client.eof_capable = False
        self.proto.connection_made(cast(asyncio.Transport, self.client))

    def upstream_conn(self) -> tuple[UpstreamConnection, FakeTransport]:
        conn = UpstreamConnection(self.pool, SERVER, self.codec)
        transport = FakeTransport(("10.0.0.9", 18080), ("10.0.0.1", 40000))
        conn.connection_made(cast(asyncio.Transport, transport))
        return conn, transport


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


@pytest.fixture(
    params=[
        "h11",
        pytest.param(
            "httptools",
            marks=pytest.mark.skipif(
                not httptools_available(), reason="httptools is not installed"
            ),
        ),
    ]
)
def codec(request: pytest.FixtureRequest) -> CodecFactory:
    return get_codec(request.param)


def test_get_produces_upstream_request_and_relays_response(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        conn, up = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(
            b"GET /items?q=a%2Fb&x HTTP/1.1\r\nHost: api.example\r\n"
            b"Connection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\n"
        )
        sent = up.take()
        head, _, rest = sent.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"GET /items?q=a%2Fb&x HTTP/1.1"
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        assert fields[b"host"] == b"api.example"
        assert fields[b"accept"] == b"*/*"
        assert fields[b"x-forwarded-for"] == b"192.0.2.10"
        assert fields[b"x-real-ip"] == b"192.0.2.10"
        assert fields[b"x-forwarded-port"] == b"16980"
        assert b"connection" not in fields or fields[b"connection"] != b"keep-alive"
        assert rest == b""
        assert rig.client.written == b""

        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: x\r\n\r\nhello")
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 200 OK\r\n")
        assert out.endswith(b"\r\n\r\nhello")
        assert b"keep-alive" not in out.lower()
        assert rig.pool.released == [conn]
        assert not rig.client.closed
        record = rig.observer.requests[-1]
        assert (record.status, record.client_ip, record.family) == (200, "192.0.2.10", "ipv4")
        rig.proto.connection_lost(None)

    run(scenario)


def test_one_write_call_per_upstream_read(codec: CodecFactory) -> None:
    """Whatever one upstream read produces reaches the client in one transport call."""

    async def scenario() -> None:
        rig = Rig(codec)
        conn, _ = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        writes = ("write", "writelines")
        for data in (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"6\r\n world\r\n3\r\n!!!\r\n",
            b"0\r\n\r\n",
        ):
            before = len([c for c in rig.client.calls if c in writes])
            conn.data_received(data)
            assert len([c for c in rig.client.calls if c in writes]) == before + 1
        out = rig.client.take()
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"5\r\nhello\r\n6\r\n world\r\n3\r\n!!!\r\n0\r\n\r\n"
        assert rig.pool.released == [conn]
        rig.proto.connection_lost(None)

    run(scenario)


def test_post_body_held_until_upstream_connects(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        rig.proto.data_received(
            b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        assert rig.pool.waiting == [rig.proto.exchange]
        assert rig.proto.exchange is not None
        conn, up = rig.upstream_conn()
        rig.pool.waiting[0].upstream_ready(conn, False)
        sent = up.take()
        assert sent.startswith(b"POST /up HTTP/1.1\r\n")
        assert sent.endswith(b"\r\n\r\n0123456789")
        conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert rig.client.take().startswith(b"HTTP/1.1 201 ")
        rig.proto.connection_lost(None)

    run(scenario)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
def test_bad_request_answered_and_closed(codec: CodecFactory, data: bytes, status: int) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        rig.proto.data_received(data)
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 %d " % status)
        assert b"connection: close" in out.lower()
        assert rig.client.closed
        assert rig.pool.waiting == []
        assert rig.observer.client_errors
        rig.proto.connection_lost(None)

    run(scenario)


def test_upstream_failure_before_head_is_502(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        rig.proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        conn, _ = rig.upstream_conn()
        rig.pool.waiting[0].upstream_ready(conn, False)
        conn.data_received(b"garbage that is not a status line\r\n\r\n")
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 502 ")
        assert rig.client.closed
        assert rig.observer.upstream_errors == ["protocol"]
        rig.proto.connection_lost(None)

    run(scenario)


def test_pipelined_requests_wait_for_response(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        first, up1 = rig.upstream_conn()
        rig.pool.idle.append(first)
        rig.proto.data_received(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        assert up1.take().startswith(b"GET /1 ")
        # The second request is not started while the first is in flight.
        assert rig.pool.waiting == []
        second, up2 = rig.upstream_conn()
        rig.pool.idle.append(second)
        first.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        assert up2.take().startswith(b"GET /2 ")
        second.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        out = rig.client.take()
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert out.index(b"\r\n\r\na") < out.index(b"\r\n\r\nb")
        rig.proto.connection_lost(None)

    run(scenario)


def test_over_capacity_aborts_at_once(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec, max_connections=1)
        other = ClientConnection(rig.shared)
        transport = FakeTransport(("127.0.0.1", 1), ("::", 16980, 0, 0))
        other.connection_made(cast(asyncio.Transport, transport))
        assert transport.aborted
        assert rig.observer.client_errors == ["over_capacity"]
        other.connection_lost(None)
        rig.proto.connection_lost(None)
        assert rig.shared.connections == set()

    run(scenario)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUser-Agent: fake-ws/1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def test_101_swaps_both_transports_to_the_tunnel(codec: CodecFactory) -> None:
    """After a 101 neither HTTP protocol object hears another byte: the tunnel ends do."""

    async def scenario() -> None:
        rig = Rig(codec)
        conn, up = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(UPGRADE + b"early-client-bytes")
        assert up.take().startswith(b"GET /ws HTTP/1.1\r\n")
        conn.data_received(SWITCH + b"early-upstream-bytes")
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 101 ")
        assert out.endswith(b"\r\n\r\nearly-upstream-bytes")
        assert up.take() == b"early-client-bytes"
        client_end, upstream_end = rig.client.protocol, up.protocol
        assert client_end is not None
        assert upstream_end is not None
        assert client_end is not rig.proto
        assert upstream_end is not conn
        assert rig.pool.detached == [conn]  # the tunnel owns it now, not the pool
        assert isinstance(client_end, asyncio.Protocol)
        assert isinstance(upstream_end, asyncio.Protocol)
        client_end.data_received(b"ping")
        upstream_end.data_received(b"pong")
        assert (up.take(), rig.client.take()) == (b"ping", b"pong")
        # Half-close is passed on; the session ends when both directions are done.
        client_end.eof_received()
        assert up.eof_written
        assert not rig.observer.tunnels
        upstream_end.eof_received()
        assert rig.client.closed
        assert up.closed
        record = rig.observer.tunnels[0]
        assert record.close_reason == "upstream_closed"
        assert record.user_agent == "fake-ws/1"
        assert (record.bytes_from_client, record.bytes_to_client) == (
            len(b"early-client-bytes") + 4,
            len(b"early-upstream-bytes") + 4,
        )
        client_end.connection_lost(None)
        assert rig.shared.connections == set()
        assert rig.observer.closed == ["ipv4"]

    run(scenario)


def test_a_tls_client_is_https_and_its_tunnel_ends_at_the_first_fin(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec, tls=True)
        conn, up = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(UPGRADE)
        assert b"\r\nX-Forwarded-Proto: https\r\n" in up.take()
        conn.data_received(SWITCH)
        client_end, upstream_end = rig.client.protocol, up.protocol
        assert isinstance(client_end, asyncio.Protocol)
        assert isinstance(upstream_end, asyncio.Protocol)
        # A TLS connection cannot be half-closed: the upstream's FIN ends the session
        # (else the client would wait for a close that never comes).
        assert upstream_end.eof_received()  # the upstream socket itself stays ours to close
        assert (rig.client.closed, up.closed, up.eof_written) == (True, True, False)
        assert rig.observer.tunnels[0].close_reason == "upstream_closed"
        # The client's close_notify: the loop closes a TLS transport itself.
        assert client_end.eof_received() is False

    run(scenario)


def test_a_cleartext_client_is_http(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        conn, up = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b"\r\nX-Forwarded-Proto: http\r\n" in up.take()
        rig.proto.connection_lost(None)

    run(scenario)


def test_unrequested_101_is_502(codec: CodecFactory) -> None:
    async def scenario() -> None:
        rig = Rig(codec)
        conn, up = rig.upstream_conn()
        rig.pool.idle.append(conn)
        rig.proto.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.data_received(SWITCH)
        assert rig.client.take().startswith(b"HTTP/1.1 502 ")
        assert rig.client.protocol is None  # no tunnel
        assert rig.observer.upstream_errors == ["protocol"]
        rig.proto.connection_lost(None)

    run(scenario)
