"""Protocol tier: the upstream pool with a fake connector and fake transports, no sockets.

Happy Eyeballs (the first address to answer wins, losers are closed), server
choice per request across several servers, idle reuse and expiry bookkeeping,
and the stale-connection retry an exchange makes through the pool.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from dsproxy.config import Config, ServerConfig, UpstreamConfig, UpstreamServer
from dsproxy.errors import UpstreamError
from dsproxy.http.codec import get_codec
from dsproxy.net.addr import HostPort
from dsproxy.net.happy_eyeballs import HAPPY_EYEBALLS_DELAY_SECONDS
from dsproxy.net.resolver import Resolver
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.pool import DEFAULT_GROUP, ConnectionFactory, PoolRegistry, UpstreamPool
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from dsproxy.proxy.upstream import UpstreamConnection
from tests.conftest import RecordingObserver
from tests.protocol.test_connection_fake import FakeTransport

NAMED = UpstreamServer("gateway.test", 18080)


@dataclass
class Attempt:
    address: str
    started: float
    outcome: asyncio.Future[None]  # set_result: connects; set_exception: fails


@dataclass
class FakeNetwork:
    """A connector whose attempts the test settles one by one."""

    attempts: list[Attempt] = field(default_factory=list)
    transports: list[FakeTransport] = field(default_factory=list)

    async def connect(
        self, factory: ConnectionFactory, address: str, port: int
    ) -> tuple[asyncio.BaseTransport, UpstreamConnection]:
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.attempts.append(Attempt(address, time.monotonic(), outcome))
        await outcome
        conn = factory()
        transport = FakeTransport((address, port), ("10.0.0.1", 40000 + len(self.transports)))
        self.transports.append(transport)
        conn.connection_made(cast(asyncio.Transport, transport))
        return cast(asyncio.BaseTransport, transport), conn


class Waiter:
    def __init__(self) -> None:
        self.ready: list[tuple[UpstreamConnection, bool]] = []
        self.failed: list[UpstreamError] = []

    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        self.ready.append((conn, reused))

    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None:
        self.failed.append(error)


def lookup_of(answer: Sequence[tuple[int, str]]) -> Callable[[str, int], Awaitable[Any]]:
    async def lookup(host: str, port: int) -> list[tuple[int, str]]:
        return list(answer)

    return lookup


def make_pool(
    net: FakeNetwork,
    *servers: UpstreamServer,
    answer: Sequence[tuple[int, str]] | None = None,
    **upstream: Any,
) -> tuple[UpstreamPool, RecordingObserver]:
    config = UpstreamConfig(servers=servers or (NAMED,), resolve_interval=0, **upstream)
    observer = RecordingObserver()
    resolver = Resolver(0, lookup=lookup_of(answer or [(socket.AF_INET, "10.0.0.9")]))
    pool = UpstreamPool(config, get_codec("h11"), observer, resolver, connector=net.connect)
    return pool, observer


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate`` holds (the fakes set no events), 2 s at most."""
    deadline = time.monotonic() + 2.0
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)  # noqa: ASYNC110


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await coro_fn()

    asyncio.run(main())


# ------------------------------------------------------------------ Happy Eyeballs
def test_second_family_starts_after_the_delay_and_wins_when_first_hangs() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        answer = [(socket.AF_INET6, "2001:db8::9"), (socket.AF_INET, "192.0.2.9")]
        pool, _ = make_pool(net, answer=answer)
        waiter = Waiter()
        assert pool.acquire(waiter) is None
        await until(lambda: len(net.attempts) == 2)
        first, second = net.attempts
        assert (first.address, second.address) == ("2001:db8::9", "192.0.2.9")
        assert second.started - first.started >= HAPPY_EYEBALLS_DELAY_SECONDS * 0.9
        second.outcome.set_result(None)
        await until(lambda: bool(waiter.ready))
        conn, reused = waiter.ready[0]
        assert (conn.address, reused) == ("192.0.2.9", False)
        await until(lambda: first.outcome.cancelled())  # the loser was cancelled
        pool.close()

    run(scenario)


def test_a_failed_attempt_starts_the_next_one_at_once() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        answer = [(socket.AF_INET6, "2001:db8::9"), (socket.AF_INET, "192.0.2.9")]
        pool, _ = make_pool(net, answer=answer)
        waiter = Waiter()
        pool.acquire(waiter)
        await until(lambda: len(net.attempts) == 1)
        net.attempts[0].outcome.set_exception(ConnectionRefusedError("refused"))
        await until(lambda: len(net.attempts) == 2)
        assert net.attempts[1].started - net.attempts[0].started < HAPPY_EYEBALLS_DELAY_SECONDS
        net.attempts[1].outcome.set_result(None)
        await until(lambda: bool(waiter.ready))
        assert waiter.ready[0][0].address == "192.0.2.9"
        pool.close()

    run(scenario)


def test_a_loser_that_connects_anyway_is_closed() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        answer = [(socket.AF_INET6, "2001:db8::9"), (socket.AF_INET, "192.0.2.9")]
        pool, _ = make_pool(net, answer=answer)
        waiter = Waiter()
        pool.acquire(waiter)
        await until(lambda: len(net.attempts) == 2)
        # Both settle in the same turn of the loop: one wins, the other must not leak.
        net.attempts[0].outcome.set_result(None)
        net.attempts[1].outcome.set_result(None)
        await until(lambda: bool(waiter.ready) and len(net.transports) == 2)
        await until(lambda: sum(t.closed for t in net.transports) == 1)
        winner = waiter.ready[0][0]
        assert winner.transport is not None
        assert not winner.transport.is_closing()
        pool.close()

    run(scenario)


def test_every_address_failing_fails_the_waiter_with_each_reason() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        answer = [(socket.AF_INET6, "2001:db8::9"), (socket.AF_INET, "192.0.2.9")]
        pool, observer = make_pool(net, answer=answer)
        waiter = Waiter()
        pool.acquire(waiter)
        await until(lambda: len(net.attempts) == 1)
        net.attempts[0].outcome.set_exception(OSError("no route"))
        await until(lambda: len(net.attempts) == 2)
        net.attempts[1].outcome.set_exception(ConnectionRefusedError("refused"))
        await until(lambda: bool(waiter.failed))
        error = waiter.failed[0]
        assert error.kind == "connect"
        assert "no route" in error.detail
        assert "refused" in error.detail
        pool.close()

    run(scenario)


# ----------------------------------------------------------------- lending, reuse
def test_released_connection_is_lent_again_and_counted() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        pool, _ = make_pool(net, keepalive_requests=2)
        waiter = Waiter()
        pool.acquire(waiter)
        await until(lambda: bool(net.attempts))
        net.attempts[0].outcome.set_result(None)
        await until(lambda: bool(waiter.ready))
        conn = waiter.ready[0][0]
        pool.release(conn, used=False)
        assert pool.idle_count == 1
        assert pool.acquire(Waiter()) is conn
        assert pool.idle_count == 0
        conn.requests = 1
        pool.release(conn, used=True)  # the second request: keepalive_requests reached
        assert pool.idle_count == 0
        assert net.transports[0].closed
        pool.close()

    run(scenario)


def test_several_servers_take_turns_per_request() -> None:
    """Sequential requests are spread over the servers, idle connections reused per server."""

    async def scenario() -> None:
        net = FakeNetwork()
        a, b = UpstreamServer("192.0.2.1", 80), UpstreamServer("192.0.2.2", 80)
        pool, _ = make_pool(net, a, b)
        used: list[str] = []
        for _ in range(6):
            waiter = Waiter()
            conn = pool.acquire(waiter)
            if conn is None:
                await until(lambda: len(net.attempts) > sum(1 for _ in net.transports))
                net.attempts[-1].outcome.set_result(None)
                await until(lambda w=waiter: bool(w.ready))  # type: ignore[misc]
                conn = waiter.ready[0][0]
            used.append(conn.server.host)
            pool.release(conn, used=False)
        assert used == ["192.0.2.1", "192.0.2.2"] * 3
        assert len(net.transports) == 2  # one connection per server, reused in turn
        pool.close()

    run(scenario)


# ------------------------------------------------------- stale connection, retried
class Rig:
    def __init__(self, net: FakeNetwork) -> None:
        self.pool, self.observer = make_pool(net)
        config = Config(
            server=ServerConfig(listen=(HostPort("::", 16980),)),
            upstream=self.pool.config,
        )
        pools = PoolRegistry({DEFAULT_GROUP: self.pool})
        shared = Shared(
            config=config,
            codec=get_codec("h11"),
            pools=pools,
            router=build_router(config, pools),
            observer=self.observer,
        )
        self.proto = ClientConnection(shared)
        self.client = FakeTransport(("192.0.2.10", 50000), ("::", 16980, 0, 0))
        self.proto.connection_made(cast(asyncio.Transport, self.client))


async def pooled_connection(rig: Rig, net: FakeNetwork) -> UpstreamConnection:
    waiter = Waiter()
    rig.pool.acquire(waiter)
    await until(lambda: bool(net.attempts))
    net.attempts[-1].outcome.set_result(None)
    await until(lambda: bool(waiter.ready))
    conn = waiter.ready[0][0]
    rig.pool.release(conn, used=False)
    return conn


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_request_retried_once_when_pooled_connection_was_closed(method: str) -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        rig = Rig(net)
        stale = await pooled_connection(rig, net)
        rig.proto.data_received(f"{method} /r HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert net.transports[0].take().startswith(f"{method} /r ".encode())
        stale.connection_lost(None)  # the upstream had closed it while it sat idle
        await until(lambda: len(net.attempts) == 2)
        net.attempts[1].outcome.set_result(None)
        await until(lambda: len(net.transports) == 2)
        fresh = net.transports[1]
        await until(lambda: bool(fresh.written))
        assert fresh.take().startswith(f"{method} /r ".encode())
        conn = rig.pool._busy.copy().pop()  # the fresh connection, borrowed by the exchange
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 200 ")
        assert out.endswith(b"ok")
        assert rig.observer.upstream_errors == ["reset"]
        assert [r.status for r in rig.observer.requests] == [200]
        rig.proto.connection_lost(None)
        rig.pool.close()

    run(scenario)


def test_post_is_not_retried_on_a_closed_pooled_connection() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        rig = Rig(net)
        stale = await pooled_connection(rig, net)
        rig.proto.data_received(b"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        stale.connection_lost(None)
        out = rig.client.take()
        assert out.startswith(b"HTTP/1.1 502 ")
        assert len(net.attempts) == 1  # no second connection: the POST was sent once
        assert rig.client.closed
        assert [r.status for r in rig.observer.requests] == [502]
        rig.proto.connection_lost(None)
        rig.pool.close()

    run(scenario)


def test_retry_happens_once_only() -> None:
    async def scenario() -> None:
        net = FakeNetwork()
        rig = Rig(net)
        stale = await pooled_connection(rig, net)
        rig.proto.data_received(b"GET /r HTTP/1.1\r\nHost: h\r\n\r\n")
        stale.connection_lost(None)
        await until(lambda: len(net.attempts) == 2)
        net.attempts[1].outcome.set_result(None)
        await until(lambda: len(net.transports) == 2)
        await until(lambda: bool(rig.pool._busy))
        rig.pool._busy.copy().pop().connection_lost(None)  # the retry fails too
        assert rig.client.take().startswith(b"HTTP/1.1 502 ")
        assert len(net.attempts) == 2
        rig.proto.connection_lost(None)
        rig.pool.close()

    run(scenario)
