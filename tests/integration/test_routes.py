"""[[routes]] over loopback, with several real upstreams: matching, per-route settings,
header rules, labels, WebSocket through a route, and the Forwarded header.
Both address families and both codecs (the host and parser fixtures)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dsproxy.config import RouteConfig, config_from_mapping
from tests.conftest import LoopThread, ProxyFactory, RunningProxy, exchange, raw_request
from tests.upstream_server import Upstream


@pytest.fixture
def api(loop_thread: LoopThread) -> Iterator[Upstream]:
    up = Upstream(name="api", strip="/api")
    loop_thread.call(up.start())
    yield up
    loop_thread.call(up.close())


@pytest.fixture
def v2(loop_thread: LoopThread) -> Iterator[Upstream]:
    up = Upstream(name="v2", strip="/api/v2")
    loop_thread.call(up.start())
    yield up
    loop_thread.call(up.close())


def routes(default: Upstream, *tables: dict[str, Any]) -> tuple[RouteConfig, ...]:
    """``[[routes]]`` tables through the config loader, as a file would give them."""
    document = {"upstream": {"url": f"http://127.0.0.1:{default.port}"}, "routes": list(tables)}
    return config_from_mapping(document).routes


def url_of(upstream: Upstream) -> str:
    return f"http://127.0.0.1:{upstream.port}"


def get(proxy: RunningProxy, target: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(timeout=10, trust_env=False) as client:
        return client.get(proxy.url + target, **kwargs)


def echoed_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    name: str = response.json()["upstream"]
    return name


def headers_of(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest.fixture
def routed(
    proxy_factory: ProxyFactory, upstream: Upstream, api: Upstream, v2: Upstream
) -> RunningProxy:
    upstream.name, upstream.strip = "default", ""
    return proxy_factory(
        routes=routes(
            upstream,
            {"prefix": "/api/", "url": url_of(api), "name": "api"},
            {"prefix": "/api/v2", "url": url_of(v2)},
        )
    )


# ================================================================== matching
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/echo", "default"),
        ("/api/echo", "api"),
        ("/api/echo?next=/api/v2/x", "api"),  # the query is not the path
        ("/api/v2/echo", "v2"),  # longest prefix wins
        ("/api/v2x/echo", "api"),  # whole segments only
        ("/apix/echo", "default"),  # /api never matches /apix
        ("/x/../api/echo", "api"),  # dot-segments cannot dodge a route
        ("/%61pi/v2/echo", "v2"),  # nor escaped unreserved characters
        ("//api//v2/echo", "v2"),  # nor doubled slashes
    ],
)
def test_the_longest_whole_segment_prefix_of_the_normalised_path_wins(
    routed: RunningProxy,
    upstream: Upstream,
    api: Upstream,
    v2: Upstream,
    target: str,
    expected: str,
) -> None:
    exchange(routed, raw_request("GET", target))
    reached = {up.name: up.requests for up in (upstream, api, v2) if up.requests}
    assert reached == {expected: [("GET", target)]}  # forwarded unchanged


def test_a_path_above_the_root_is_refused_and_the_proxy_keeps_serving(
    routed: RunningProxy, upstream: Upstream, api: Upstream
) -> None:
    (resp,) = exchange(routed, raw_request("GET", "/api/../../etc/passwd"))
    assert resp.status == 400
    assert not upstream.requests
    assert not api.requests
    assert echoed_by(get(routed, "/api/echo")) == "api"
    (record,) = [r for r in routed.observer.requests if r.status == 400]
    assert record.error == "bad_request"


def test_the_route_label_reaches_the_records(routed: RunningProxy) -> None:
    assert echoed_by(get(routed, "/api/v2/echo")) == "v2"
    assert echoed_by(get(routed, "/echo")) == "default"
    assert echoed_by(get(routed, "/api/echo")) == "api"
    assert [r.route for r in routed.observer.requests] == ["/api/v2", "default", "api"]


# ============================================================ per-route settings
def test_a_route_has_its_own_timeouts(
    proxy_factory: ProxyFactory, upstream: Upstream, api: Upstream
) -> None:
    proxy = proxy_factory(
        routes=routes(upstream, {"prefix": "/api", "url": url_of(api), "read_timeout": 0.3})
    )
    started = time.monotonic()
    assert get(proxy, "/api/slow?delay=3").status_code == 504
    assert time.monotonic() - started < 2.5
    assert get(proxy, "/slow?delay=0.5").status_code == 200  # the default's 60 s


def test_a_route_fails_over_between_its_own_servers(
    proxy_factory: ProxyFactory, upstream: Upstream, api: Upstream
) -> None:
    dead = "http://127.0.0.1:1"  # nothing listens on port 1
    proxy = proxy_factory(
        routes=routes(upstream, {"prefix": "/api", "url": [dead, url_of(api)]})
    )
    assert {echoed_by(get(proxy, "/api/echo")) for _ in range(4)} == {"api"}


def test_a_websocket_through_a_route(
    proxy_factory: ProxyFactory, upstream: Upstream, api: Upstream
) -> None:
    proxy = proxy_factory(
        routes=routes(
            upstream,
            {"prefix": "/api", "url": url_of(api), "name": "live", "websocket_idle_timeout": 0.5},
        )
    )
    with connect(f"ws://{proxy.authority}/api/ws", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        assert api.ws_open == 1
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):  # the route's idle timeout
            ws.recv(timeout=5)
        assert time.monotonic() - started < 3
    deadline = time.monotonic() + 5
    while not proxy.observer.tunnels and time.monotonic() < deadline:
        time.sleep(0.02)
    (tunnel,) = proxy.observer.tunnels
    assert tunnel.route == "live"
    assert tunnel.close_reason == "idle_timeout"


# ================================================================== header rules
def test_header_rules_set_and_remove_both_ways(
    proxy_factory: ProxyFactory, upstream: Upstream, api: Upstream
) -> None:
    proxy = proxy_factory(
        routes=routes(
            upstream,
            {
                "prefix": "/api",
                "url": url_of(api),
                "request_headers_set": {"X-Env": "prod", "X-Real-IP": "192.0.2.1"},
                "request_headers_remove": ["X-Debug"],
                "response_headers_set": {"X-Frame-Options": "DENY"},
                "response_headers_remove": ["Content-Type"],
            },
        )
    )
    sent = {"X-Env": "dev", "X-Debug": "1", "Connection": "X-Hop", "X-Hop": "a", "X-Keep": "k"}
    routed = get(proxy, "/api/echo", headers=sent)
    seen = headers_of(routed)
    assert seen["x-env"] == ["prod"]  # set replaces the client's value
    assert seen["x-real-ip"] == ["192.0.2.1"]  # even the proxy's own header
    assert "x-debug" not in seen
    assert "x-hop" not in seen
    assert "connection" not in seen
    assert seen["x-keep"] == ["k"]
    assert routed.headers["x-frame-options"] == "DENY"
    assert "content-type" not in routed.headers
    # The default route has no rules.
    plain = get(proxy, "/echo", headers=sent)
    assert headers_of(plain)["x-debug"] == ["1"]
    assert "x-frame-options" not in plain.headers
    assert plain.headers["content-type"] == "application/json"


# ================================================================== Forwarded
def test_forwarded_is_added_and_replaces_an_untrusted_value(
    proxy_factory: ProxyFactory, host: str
) -> None:
    proxy = proxy_factory(server={"forwarded": True})
    seen = headers_of(get(proxy, "/echo", headers={"Forwarded": "for=6.6.6.6"}))
    node = f'"[{host}]"' if ":" in host else host
    (value,) = seen["forwarded"]
    assert value == f'for={node};proto=http;host="{proxy.authority}";by={node}'


def test_forwarded_appends_to_a_trusted_peers_value(
    proxy_factory: ProxyFactory, host: str
) -> None:
    import ipaddress

    network = ipaddress.ip_network(host)
    proxy = proxy_factory(server={"forwarded": True, "trusted_proxies": (network,)})
    seen = headers_of(
        get(proxy, "/echo", headers={"Forwarded": 'for="[2001:db8::7]";proto=https'})
    )
    node = f'"[{host}]"' if ":" in host else host
    (value,) = seen["forwarded"]
    assert value == (
        f'for="[2001:db8::7]";proto=https, for={node};proto=http;host="{proxy.authority}";by={node}'
    )


def test_without_forwarded_the_clients_header_passes_untouched(proxy: RunningProxy) -> None:
    seen = headers_of(get(proxy, "/echo", headers={"Forwarded": "for=198.51.100.9"}))
    assert seen["forwarded"] == ["for=198.51.100.9"]


def test_a_reload_adds_and_removes_routes(
    proxy_factory: ProxyFactory,
    loop_thread: LoopThread,
    upstream: Upstream,
    api: Upstream,
) -> None:
    upstream.name = "default"
    proxy = proxy_factory()
    assert get(proxy, "/api/echo").status_code == 404  # the default upstream has no /api
    config = proxy.server.config
    with_route = replace(config, routes=routes(upstream, {"prefix": "/api", "url": url_of(api)}))
    loop_thread.call(proxy.server.reload(with_route))
    assert echoed_by(get(proxy, "/api/echo")) == "api"
    loop_thread.call(proxy.server.reload(config))
    assert get(proxy, "/api/echo").status_code == 404
    assert len(api.requests) == 1
