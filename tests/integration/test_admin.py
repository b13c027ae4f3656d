"""The admin listener over real loopback sockets (127.0.0.1 and ::1)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from dsproxy.net.addr import HostPort
from dsproxy.observe import admin as admin_module
from dsproxy.observe.admin import AdminServer, start_admin
from dsproxy.observe.metrics import Metrics
from tests.support import ipv6_available
from tests.unit.test_metrics import request

LOOPBACKS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback unavailable"),
    ),
]
TEST_TIMEOUT_SECONDS = 10

Scenario = Callable[[AdminServer, httpx.AsyncClient, str], Awaitable[None]]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """The proxy runs on uvloop; the admin listener must work on both loops."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def run(
    host: str,
    scenario: Scenario,
    *,
    loop_factory: LoopFactory = asyncio.new_event_loop,
    registry: CollectorRegistry | None = None,
    is_ready: Callable[[], bool] = lambda: True,
) -> None:
    async def main() -> None:
        admin = await start_admin(
            HostPort(host, 0), registry=registry or CollectorRegistry(), is_ready=is_ready
        )
        try:
            assert admin.port != 0
            base = f"http://{HostPort(host, admin.port)}"
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                await asyncio.wait_for(scenario(admin, client, base), TEST_TIMEOUT_SECONDS)
        finally:
            await admin.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def raw_exchange(host: str, port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("host", LOOPBACKS)
def test_healthz(host: str, loop_factory: LoopFactory) -> None:
    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        response = await client.get(base + "/healthz")
        assert response.status_code == 200
        assert response.text == "ok\n"
        assert response.headers["content-type"].startswith("text/plain")
        head = await client.head(base + "/healthz")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == "3"

    run(host, scenario, loop_factory=loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_readyz_follows_is_ready(host: str, loop_factory: LoopFactory) -> None:
    ready = [True]

    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        response = await client.get(base + "/readyz")
        assert (response.status_code, response.text) == (200, "ready\n")
        ready[0] = False  # SIGTERM arrived
        response = await client.get(base + "/readyz")
        assert (response.status_code, response.text) == (503, "draining\n")
        assert (await client.get(base + "/healthz")).status_code == 200

    run(host, scenario, is_ready=lambda: ready[0], loop_factory=loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_metrics_shows_counters(host: str, loop_factory: LoopFactory) -> None:
    metrics = Metrics(CollectorRegistry())
    for _ in range(3):
        metrics.request_done(request(status=404))

    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        response = await client.get(base + "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        sample = 'dsproxy_requests_total{code="404",family="ipv4",route="default"}'
        assert f"{sample} 3.0" in response.text
        metrics.request_done(request(status=404))  # a live registry, not a snapshot
        response = await client.get(base + "/metrics?x=1")
        assert f"{sample} 4.0" in response.text

    run(host, scenario, registry=metrics.registry, loop_factory=loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_unknown_path_and_method(host: str, loop_factory: LoopFactory) -> None:
    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        assert (await client.get(base + "/")).status_code == 404
        assert (await client.get(base + "/metricsx")).status_code == 404
        response = await client.post(base + "/metrics", content=b"x" * 100)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert (await client.delete(base + "/healthz")).status_code == 405
        assert (await client.get(base + "/healthz")).status_code == 200

    run(host, scenario, loop_factory=loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_garbage_gets_400_and_the_server_keeps_serving(
    host: str, loop_factory: LoopFactory
) -> None:
    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        reply = await raw_exchange(host, admin.port, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in reply.lower()
        reply = await raw_exchange(host, admin.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 10000)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert (await client.get(base + "/healthz")).status_code == 200

    run(host, scenario, loop_factory=loop_factory)


def test_keep_alive_and_pipelining() -> None:
    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        two = (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        reply = await raw_exchange("127.0.0.1", admin.port, two)
        assert reply.count(b"HTTP/1.1 200 ") == 2
        assert reply.endswith(b"ready\n")

    run("127.0.0.1", scenario)


def test_dual_stack_wildcard_takes_ipv4() -> None:
    if not (ipv6_available() and socket.has_dualstack_ipv6()):
        pytest.skip("no dual-stack IPv6 sockets here")

    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        v4 = await client.get(f"http://127.0.0.1:{admin.port}/healthz")
        v6 = await client.get(f"http://[::1]:{admin.port}/healthz")
        assert v4.status_code == v6.status_code == 200

    run("::", scenario)


def test_close_ends_open_connections() -> None:
    async def main() -> None:
        admin = await start_admin(
            HostPort("127.0.0.1", 0), registry=CollectorRegistry(), is_ready=lambda: True
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.wait_for(admin.close(), 5)
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_slow_request_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "REQUEST_TIMEOUT_SECONDS", 0.2)

    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        reply = await raw_exchange("127.0.0.1", admin.port, b"GET /healthz HTTP/1.1\r\nHo")
        assert reply.startswith(b"HTTP/1.1 408 ")
        idle = await raw_exchange("127.0.0.1", admin.port, b"")  # idle keep-alive: just closed
        assert idle == b""

    run("127.0.0.1", scenario)


def test_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        admin = await start_admin(
            HostPort("127.0.0.1", 0), registry=CollectorRegistry(), is_ready=lambda: True
        )
        try:
            reply = await raw_exchange("127.0.0.1", admin.port, b"garbage\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 400 ")
            reply = await raw_exchange(
                "127.0.0.1",
                admin.port,
                b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert len(admin.sockets) == 1
        finally:
            await admin.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.mark.parametrize(
    ("path", "ready", "status_line"),
    [
        ("/healthz", True, b"HTTP/1.1 200 OK\r\n"),
        ("/readyz", False, b"HTTP/1.1 503 Service Unavailable\r\n"),
        ("/nope", True, b"HTTP/1.1 404 Not Found\r\n"),
    ],
)
def test_responses_carry_a_reason_phrase(path: str, ready: bool, status_line: bytes) -> None:
    async def scenario(admin: AdminServer, client: httpx.AsyncClient, base: str) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        response = await raw_exchange("127.0.0.1", admin.port, request)
        assert response.startswith(status_line)

    run("127.0.0.1", scenario, is_ready=lambda: ready)


def test_bind_error_names_the_flag_and_the_key() -> None:
    async def main() -> None:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = HostPort("127.0.0.1", holder.getsockname()[1])
        try:
            with pytest.raises(OSError, match="in use") as info:
                await start_admin(address, registry=CollectorRegistry(), is_ready=lambda: True)
        finally:
            holder.close()
        message = admin_module.admin_bind_error(address, info.value)
        assert message.startswith(f"cannot listen on admin address {address}: ")
        assert "--admin ADDR|off" in message
        assert "admin.listen" in message

    asyncio.run(main())


def test_replace_admin_moves_and_keeps_the_old_one_on_failure() -> None:
    async def main() -> None:
        registry = CollectorRegistry()

        async def start(address: HostPort) -> AdminServer:
            return await start_admin(address, registry=registry, is_ready=lambda: True)

        async def status(address: HostPort) -> int:
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                return (await client.get(f"http://{address}/healthz")).status_code

        first = await start(HostPort("127.0.0.1", 0))
        old = first.address
        # Moving to a fresh port: the new one serves, the old one is closed.
        moved = await admin_module.replace_admin(first, old, HostPort("127.0.0.1", 0), start)
        assert moved is not None
        assert moved.port != old.port
        assert await status(moved.address) == 200
        with pytest.raises(httpx.ConnectError):
            await status(old)
        # A port someone else holds: the running listener is kept (bound again).
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = HostPort("127.0.0.1", holder.getsockname()[1])
        try:
            kept = await admin_module.replace_admin(moved, moved.address, taken, start)
        finally:
            holder.close()
        assert kept is not None
        assert kept.address == moved.address
        assert await status(kept.address) == 200
        # off closes it.
        assert await admin_module.replace_admin(kept, kept.address, None, start) is None
        with pytest.raises(httpx.ConnectError):
            await status(kept.address)

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_SECONDS))
