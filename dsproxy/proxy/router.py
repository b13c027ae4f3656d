"""Which upstream group a request goes to.

A ``Route`` is everything an exchange needs to know about its upstream
group: the pool to borrow from, how to rewrite Host, the header rules and the
group's timeouts. ``[upstream]`` is the default route; each ``[[routes]]``
table adds one, matched by path prefix (docs/configuration.md, "Routes"):
the longest prefix that matches whole segments of the request's normalised
path wins (``/api`` matches ``/api`` and ``/api/x``, never ``/apix``).

With no ``[[routes]]`` the router's ``only`` route is the default one and
callers skip matching altogether; with a few, matching is a loop of
``startswith`` over the prefixes, longest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsproxy.config import Config, RouteConfig, UpstreamConfig
from dsproxy.http.paths import route_path
from dsproxy.http.rules import HeaderRules, UpstreamTarget, header_rules
from dsproxy.proxy.pool import DEFAULT_GROUP, Pool, PoolRegistry

# What may follow a matching prefix: the end of a segment (or of the path, at "?").
_SEGMENT_END = b"/?"


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the metrics / access-log label
    pool: Pool
    target: UpstreamTarget
    read_timeout: float  # inactivity waiting for upstream bytes -> 504
    send_timeout: float  # inactivity writing to the upstream -> 504
    websocket_idle_timeout: float  # no bytes either way in a tunnel -> close (0 = never)
    response_rules: HeaderRules | None = None  # applied to the upstream's responses


class Router:
    """Picks the route of a request from its target."""

    def __init__(self, default: Route, routes: list[tuple[bytes, Route]] | None = None) -> None:
        self.default = default
        # Longest prefix first: the first match is the longest one.
        self._routes = sorted(routes or [], key=lambda item: len(item[0]), reverse=True)
        # The route of every request when there is only one: callers skip route().
        self.only: Route | None = None if self._routes else default

    @property
    def routes(self) -> list[tuple[bytes, Route]]:
        """(normalised prefix, route), longest prefix first; the default is not listed."""
        return list(self._routes)

    def route(self, target: bytes) -> Route:
        """The route of a request target; raises ClientError (400) for a path above ``/``."""
        # Byte values, not b"%" in target: an int needle is the fast form of "in".
        if (
            not target
            or target[0] != 0x2F
            or 0x25 in target
            or 0x2E in target
            or (target.find(b"//") >= 0)
        ):
            path = route_path(target)  # escapes ("%"), dot-segments ("."), "//", absolute-form
        else:
            path = target  # already normal; a prefix may end at "/", "?" or the end
        for prefix, route in self._routes:
            if path.startswith(prefix):
                end = len(prefix)
                if len(path) == end or path[end] in _SEGMENT_END:
                    return route
        return self.default


def _route(name: str, pool: Pool, upstream: UpstreamConfig, ws_idle: float,
           route: RouteConfig | None) -> Route:  # fmt: skip
    request_rules = response_rules = None
    if route is not None:
        request_rules = header_rules(dict(route.request_headers_set), route.request_headers_remove)
        response_rules = header_rules(
            dict(route.response_headers_set), route.response_headers_remove
        )
    return Route(
        name=name,
        pool=pool,
        target=UpstreamTarget(
            authority=upstream.servers[0].authority.encode(),
            preserve_host=upstream.host_header == "preserve",
            request_rules=request_rules,
        ),
        read_timeout=upstream.read_timeout,
        send_timeout=upstream.send_timeout,
        websocket_idle_timeout=ws_idle,
        response_rules=response_rules,
    )


def build_router(config: Config, pools: PoolRegistry) -> Router:
    """The router of ``config``; ``pools`` holds one pool per route name (and DEFAULT_GROUP)."""
    default = _route(
        DEFAULT_GROUP,
        pools.get(DEFAULT_GROUP),
        config.upstream,
        config.websocket.idle_timeout,
        None,
    )
    routes = [
        (
            route.prefix.encode("ascii"),
            _route(
                route.name,
                pools.get(route.name),
                route.upstream,
                route.websocket_idle_timeout,
                route,
            ),
        )
        for route in config.routes
    ]
    return Router(default, routes)
