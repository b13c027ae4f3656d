"""Protocol tier: the PROXY protocol preamble (proxy/preamble.py) over a fake transport.

No sockets: bytes go in through ``data_received``; the test reads what the
preamble did to the transport (aborted, handed to a ClientConnection), what the
connection then sent to a fake pool's upstream connection, and what was counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from dsproxy.config import Config, ServerConfig, UpstreamConfig, UpstreamServer
from dsproxy.http.codec import get_codec
from dsproxy.net.addr import HostPort
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.limits import ClientLimits
from dsproxy.proxy.pool import PoolRegistry
from dsproxy.proxy.preamble import ProxyPreamble
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.upstream import UpstreamConnection
from fuzz.proxyproto_harness import v1, v1_unknown, v2
from tests.conftest import RecordingObserver
from tests.protocol.test_connection_fake import FakePool, FakeTransport

SERVER = UpstreamServer("10.0.0.9", 18080)
LB = ("::ffff:10.1.2.3", 40000, 0, 0)  # the load balancer, as a dual-stack socket shows it
REQUEST = b"GET /p HTTP/1.1\r\nHost: api.example\r\n\r\n"
CLIENT4 = HostPort("203.0.113.7", 51000)
CLIENT6 = HostPort("2001:db8::7", 51000)
DEST = HostPort("10.0.0.1", 443)
DEST6 = HostPort("2001:db8::1", 443)


class Rig:
    def __init__(self, **server: Any) -> None:
        settings: dict[str, Any] = {
            "proxy_protocol": True,
            "proxy_protocol_from": (ipaddress.ip_network("10.0.0.0/8"),),
            **server,
        }
        config = Config(
            server=ServerConfig(listen=(HostPort("::", 16980),), **settings),
            upstream=UpstreamConfig(servers=(SERVER,)),
        )
        self.codec = get_codec("h11")
        self.pool = FakePool()
        self.observer = RecordingObserver()
        pools = PoolRegistry({"default": self.pool})
        cfg = config.server
        self.shared = Shared(
            config=config,
            codec=self.codec,
            pools=pools,
            router=build_router(config, pools),
            observer=self.observer,
            limits=ClientLimits(
                max_connections=cfg.max_connections_per_ip, rate=0.0, burst=0, ipv6_prefix=64
            ),
        )

    def accept(self, peer: tuple[Any, ...] = LB) -> tuple[ProxyPreamble, FakeTransport]:
        preamble = ProxyPreamble(self.shared)
        transport = FakeTransport(peer, ("::", 16980, 0, 0))
        preamble.connection_made(cast(asyncio.Transport, transport))
        return preamble, transport

    def upstream(self) -> FakeTransport:
        """An idle upstream connection in the pool; returns what it is sent."""
        conn = UpstreamConnection(self.pool, SERVER, self.codec)
        transport = FakeTransport(("10.0.0.9", 18080), ("10.0.0.1", 40001))
        conn.connection_made(cast(asyncio.Transport, transport))
        self.pool.idle.append(conn)
        return transport


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


def _forwarded(sent: bytes) -> dict[bytes, bytes]:
    head = sent.partition(b"\r\n\r\n")[0]
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return fields


@pytest.mark.parametrize(
    ("header", "client_ip", "family"),
    [
        (v1(CLIENT4, DEST), "203.0.113.7", "ipv4"),
        (v1(CLIENT6, DEST6), "2001:db8::7", "ipv6"),
        (v2(CLIENT4, DEST), "203.0.113.7", "ipv4"),
        (v2(CLIENT6, DEST6), "2001:db8::7", "ipv6"),
        (v1_unknown(), "10.1.2.3", "ipv4"),  # the socket's peer, normalised
        (v2(command=0), "10.1.2.3", "ipv4"),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v2-tcp6", "v1-unknown", "v2-local"],
)
def test_header_address_is_the_client_address(header: bytes, client_ip: str, family: str) -> None:
    async def scenario() -> None:
        rig = Rig()
        up = rig.upstream()
        preamble, transport = rig.accept()
        assert rig.shared.connections == {preamble}
        preamble.data_received(header + REQUEST)  # header and request in one read
        conn = transport.protocol
        assert isinstance(conn, ClientConnection)
        assert rig.shared.connections == {conn}
        assert (conn.client_ip, conn.family) == (client_ip, family)
        fields = _forwarded(up.take())
        assert fields[b"x-forwarded-for"] == client_ip.encode()
        assert fields[b"x-real-ip"] == client_ip.encode()
        assert fields[b"x-forwarded-port"] == b"16980"  # the listening socket's port
        assert rig.observer.opened == [family]
        assert rig.observer.client_errors == []
        assert not transport.closed
        conn.connection_lost(None)
        assert rig.shared.connections == set()

    run(scenario)


def test_header_and_request_in_pieces() -> None:
    async def scenario() -> None:
        rig = Rig()
        up = rig.upstream()
        preamble, transport = rig.accept()
        data = v2(CLIENT6, DEST6) + REQUEST
        for i in range(len(data)):
            target = transport.protocol or preamble
            target.data_received(data[i : i + 1])  # type: ignore[attr-defined]
        assert _forwarded(up.take())[b"x-forwarded-for"] == b"2001:db8::7"

    run(scenario)


def test_peer_outside_the_allowed_networks_is_closed_at_once() -> None:
    async def scenario() -> None:
        rig = Rig()
        preamble, transport = rig.accept(("192.0.2.1", 40000))
        assert transport.aborted
        assert transport.written == b""
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()
        preamble.data_received(v1(CLIENT4, DEST) + REQUEST)  # late bytes change nothing
        assert transport.protocol is None
        assert rig.pool.waiting == []

    run(scenario)


@pytest.mark.parametrize(
    "data",
    [REQUEST, b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n" + REQUEST, b"\x16\x03\x01\x00"],
    ids=["plain-http", "malformed", "tls-hello"],
)
def test_bad_header_is_closed_and_counted(data: bytes) -> None:
    async def scenario() -> None:
        rig = Rig()
        up = rig.upstream()
        preamble, transport = rig.accept()
        preamble.data_received(data)
        assert transport.aborted
        assert transport.written == b""  # no response: this is not HTTP yet
        assert transport.protocol is None
        assert up.written == b""
        assert rig.pool.waiting == []
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()
        preamble.connection_lost(None)
        assert rig.observer.client_errors == ["proxy_protocol"]  # counted once

    run(scenario)


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 203.0"], ids=["missing", "truncated"])
def test_no_complete_header_within_header_timeout(sent: bytes) -> None:
    async def scenario() -> None:
        rig = Rig(header_timeout=0.05)
        preamble, transport = rig.accept()
        if sent:
            preamble.data_received(sent)
        await asyncio.sleep(0.02)
        assert not transport.closed
        await asyncio.sleep(0.1)
        assert transport.aborted
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()

    run(scenario)


def test_timer_is_cancelled_by_the_header() -> None:
    async def scenario() -> None:
        rig = Rig(header_timeout=0.05)
        preamble, transport = rig.accept()
        preamble.data_received(v1(CLIENT4, DEST))
        conn = transport.protocol
        assert isinstance(conn, ClientConnection)
        await asyncio.sleep(0.02)
        conn.data_received(REQUEST[:5])  # a slow head is now the connection's business
        await asyncio.sleep(0.1)
        assert rig.observer.client_errors == ["header_timeout"]  # 408 from the connection
        assert transport.take().startswith(b"HTTP/1.1 408 ")

    run(scenario)


def test_close_inside_the_header_is_counted_and_a_bare_connect_is_not() -> None:
    async def scenario() -> None:
        rig = Rig()
        preamble, transport = rig.accept()
        preamble.data_received(b"\r\n\r\n\x00\r\n")
        assert preamble.eof_received() is None
        assert transport.aborted
        assert rig.observer.client_errors == ["proxy_protocol"]
        health, health_transport = rig.accept()  # a TCP health check: connect, close
        assert health.eof_received() is None  # the transport closes itself
        health.connection_lost(None)
        assert not health_transport.aborted
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()

    run(scenario)


def test_waiting_preambles_count_towards_max_connections() -> None:
    async def scenario() -> None:
        rig = Rig(max_connections=1)
        first, _ = rig.accept()
        assert not first.close_if_idle()  # a reload or shutdown lets it finish its header
        _, second = rig.accept()
        assert second.aborted
        assert rig.observer.client_errors == ["over_capacity"]
        first.data_received(v1(CLIENT4, DEST))  # handed over: still one connection
        assert len(rig.shared.connections) == 1
        assert rig.observer.client_errors == ["over_capacity"]

    run(scenario)


def test_per_client_limits_count_the_header_address() -> None:
    async def scenario() -> None:
        rig = Rig(max_connections_per_ip=1)
        one, t1 = rig.accept()
        one.data_received(v1(CLIENT4, DEST))
        other, t2 = rig.accept()  # same balancer, another client: accepted
        other.data_received(v1(HostPort("198.51.100.1", 1), DEST))
        same, t3 = rig.accept()  # the first client again: over its limit
        same.data_received(v1(HostPort("203.0.113.7", 2), DEST))
        assert (t1.closed, t2.closed, t3.aborted) == (False, False, True)
        assert rig.observer.client_errors == ["too_many_connections"]
        assert rig.shared.limits.open_connections("203.0.113.7") == 1
        assert rig.shared.limits.open_connections("10.1.2.3") == 0

    run(scenario)
