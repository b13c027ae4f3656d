"""Which upstream group a request goes to.

A ``Route`` is everything an exchange needs to know about its upstream
group: the pool to borrow from, how to rewrite Host, and the group's
timeouts. Today there is one route, the default one (``[upstream]``); path
routes add entries here and nothing else changes for the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsproxy.config import Config
from dsproxy.http.rules import UpstreamTarget
from dsproxy.proxy.pool import DEFAULT_GROUP, Pool, PoolRegistry


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the metrics / access-log label
    pool: Pool
    target: UpstreamTarget
    read_timeout: float  # inactivity waiting for upstream bytes -> 504
    send_timeout: float  # inactivity writing to the upstream -> 504
    websocket_idle_timeout: float  # no bytes either way in a tunnel -> close (0 = never)


class Router:
    """Picks the route of a request from its target."""

    def __init__(self, default: Route) -> None:
        self.default = default
        # The route of every request when there is only one: callers skip route().
        self.only: Route | None = default

    def route(self, target: bytes) -> Route:
        return self.default


def build_router(config: Config, pools: PoolRegistry) -> Router:
    upstream = config.upstream
    default = Route(
        name=DEFAULT_GROUP,
        pool=pools.get(DEFAULT_GROUP),
        target=UpstreamTarget(
            authority=upstream.servers[0].authority.encode(),
            preserve_host=upstream.host_header == "preserve",
        ),
        read_timeout=upstream.read_timeout,
        send_timeout=upstream.send_timeout,
        websocket_idle_timeout=config.websocket.idle_timeout,
    )
    return Router(default)
