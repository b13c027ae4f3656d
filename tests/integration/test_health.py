"""The opt-in upstream readiness rule (``dsproxy.app.health``) on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest

from dsproxy.app.health import UpstreamReadiness
from dsproxy.config import UpstreamConfig, UpstreamServer
from dsproxy.net.resolver import Resolver

TEST_TIMEOUT_SECONDS = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_SECONDS))


def config(*ports: int, interval: float = 1.0, window: float = 3.0) -> UpstreamConfig:
    return UpstreamConfig(
        servers=tuple(UpstreamServer("127.0.0.1", port) for port in ports),
        readiness_interval=interval,
        readiness_window=window,
        connect_timeout=1.0,
    )


def test_off_by_default_is_always_ready() -> None:
    readiness = UpstreamReadiness(UpstreamConfig(), Resolver(0))
    assert not readiness.enabled
    assert readiness.ready()


def test_ready_only_within_the_window_after_an_answer() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clock = FakeClock()
        readiness = UpstreamReadiness(config(closed_port(), port), Resolver(0), clock=clock)
        assert not readiness.ready()  # nothing answered yet
        assert await readiness.probe_once()  # the second server answers
        assert readiness.ready()
        clock.now += 3.0
        assert readiness.ready()
        clock.now += 0.1
        assert not readiness.ready()  # window passed without an answer
        server.close()
        await server.wait_closed()
        assert not await readiness.probe_once()
        assert not readiness.ready()

    run(main())


def test_an_unresolvable_name_is_not_an_answer() -> None:
    async def lookup(host: str, port: int) -> list[tuple[int, str]]:
        raise OSError("Name or service not known")

    async def main() -> None:
        upstream = UpstreamConfig(
            servers=(UpstreamServer("gateway.invalid", 80),), readiness_interval=1.0
        )
        readiness = UpstreamReadiness(upstream, Resolver(0, lookup=lookup))
        assert not await readiness.probe_once()
        assert not readiness.ready()

    run(main())


@pytest.mark.parametrize("answering", [True, False])
def test_background_probe_and_stop(answering: bool) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1] if answering else closed_port()
        readiness = UpstreamReadiness(config(port, interval=0.05, window=1), Resolver(0))
        readiness.start()
        await asyncio.sleep(0.3)
        assert readiness.ready() is answering
        await readiness.stop()
        server.close()
        await server.wait_closed()

    run(main())
