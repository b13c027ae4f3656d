"""Opt-in readiness on the upstream: is any upstream address answering?

With ``upstream.readiness_interval > 0``, every that many seconds each upstream
server's name is resolved (``dsproxy.net.resolver.Resolver``, the proxy's own
rules) and a TCP connection is opened to each of its addresses, then closed at
once. ``/readyz`` fails while no address has answered within the last
``upstream.readiness_window`` seconds, so a load balancer stops sending clients
to a proxy whose every request would get 502. From start until the first
answer the proxy is not ready.

A TCP connect, not an HTTP request: it needs no path on the gateway, and what
it proves (the gateway accepts connections) is what the 502s are about. It is
kept outside the data path: the probe's connections are not pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from dsproxy.config import UpstreamConfig
from dsproxy.net.resolver import Resolver

log = logging.getLogger("dsproxy.app.health")


class UpstreamReadiness:
    """Probes the upstream servers in the background; ``ready()`` is the rule."""

    def __init__(
        self,
        config: UpstreamConfig,
        resolver: Resolver,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self._clock = clock
        self._last_answer: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._reachable: bool | None = None  # for logging changes only

    @property
    def enabled(self) -> bool:
        return self.config.readiness_interval > 0

    def ready(self) -> bool:
        """True when the rule is off, or an upstream address answered within the window."""
        if not self.enabled:
            return True
        last = self._last_answer
        return last is not None and self._clock() - last <= self.config.readiness_window

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reconfigure(self, config: UpstreamConfig) -> None:
        """A reload: probe the new servers (an answer from the old ones still counts)."""
        await self.stop()
        self.config = config
        self.start()

    async def probe_once(self) -> bool:
        """One round over every server and address; True when any answered."""
        timeout = min(self.config.connect_timeout, self.config.readiness_interval)
        for server in self.config.servers:
            try:
                addresses = await self.resolver.resolve(server)
            except OSError as exc:
                log.debug("readiness: %s", exc)
                continue
            for address in addresses:
                if await _answers(address, server.port, seconds=timeout):
                    self._last_answer = self._clock()
                    return True
        return False

    async def _run(self) -> None:
        while True:
            answered = await self.probe_once()
            if answered != self._reachable:
                if answered:
                    log.info("readiness: the upstream answers")
                else:
                    names = ", ".join(server.url for server in self.config.servers)
                    log.warning(
                        "readiness: no upstream address answers (%s); /readyz fails after "
                        "upstream.readiness_window (%gs) without an answer",
                        names,
                        self.config.readiness_window,
                    )
                self._reachable = answered
            await asyncio.sleep(self.config.readiness_interval)


async def _answers(host: str, port: int, *, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
