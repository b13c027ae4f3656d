"""Routing rules without sockets: the path routes match, prefixes, the router, and the
route config (docs/configuration.md, "Routes")."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsproxy.config import config_from_mapping
from dsproxy.config.routes import ROUTE_KEYS
from dsproxy.errors import ClientError, ConfigError
from dsproxy.http.paths import route_path
from dsproxy.http.rules import UpstreamTarget
from dsproxy.proxy.pool import Pool
from dsproxy.proxy.router import Route, Router


# ================================================================== route_path
@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/", b"/"),
        (b"/api", b"/api"),
        (b"/api/x?y=1", b"/api/x"),
        (b"/api?/x", b"/api"),
        (b"/x/../api", b"/api"),
        (b"/a/./b/.", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/../", b"/a/"),
        (b"//api//v1/", b"/api/v1/"),
        (b"/%61pi", b"/api"),
        (b"/%41%7e%2D%2e", b"/A~-."),
        (b"/%2e%2e%2f", b"/..%2f"),  # ".." is a segment only when "/" follows, not %2f
        (b"/a%2Fb", b"/a%2Fb"),  # %2F is not unreserved: it stays encoded
        (b"/%zz/%4", b"/%zz/%4"),
        (b"/caf%C3%A9", b"/caf%C3%A9"),
        (b"*", b"/"),
        (b"http://gw:1/api/x?q", b"/api/x"),
        (b"http://gw:1", b"/"),
        (b"http://gw:1?next=/api", b"/"),  # a "/" in the query is not the path
        (b"http://gw:1#/api", b"/"),
        (b"gw:443", b"/"),
    ],
)
def test_route_path(target: bytes, path: bytes) -> None:
    assert route_path(target) == path


@pytest.mark.parametrize("target", [b"/..", b"/../x", b"/a/../../b", b"/%2e%2e/x", b"/./../x"])
def test_a_path_above_the_root_is_a_400(target: bytes) -> None:
    with pytest.raises(ClientError) as info:
        route_path(target)
    assert info.value.status == 400


SEGMENT = st.sampled_from(["a", "api", ".", "..", "", "%61", "v2", "%2e"])


@given(st.lists(SEGMENT, max_size=8))
def test_route_path_is_normal_and_idempotent(segments: list[str]) -> None:
    target = ("/" + "/".join(segments)).encode()
    try:
        path = route_path(target)
    except ClientError:
        return
    assert path.startswith(b"/")
    assert b"//" not in path
    assert b"/./" not in path + b"/"
    assert b"/../" not in path + b"/"
    assert route_path(path) == path


# ================================================================== the router
def make_route(name: str) -> Route:
    return Route(name, cast(Pool, None), UpstreamTarget(b"gw:1", True), 60.0, 60.0, 3600.0)


DEFAULT = make_route("default")
ROUTER = Router(
    DEFAULT,
    [(b"/api", make_route("api")), (b"/api/v2", make_route("v2")), (b"/ws", make_route("ws"))],
)


@pytest.mark.parametrize(
    ("target", "name"),
    [
        (b"/api", "api"),
        (b"/api/", "api"),
        (b"/api?x", "api"),
        (b"/api/x", "api"),
        (b"/apix", "default"),
        (b"/ap", "default"),
        (b"/api/v2", "v2"),
        (b"/api/v2/orders?a=/ws", "v2"),
        (b"/api/v2x", "api"),
        (b"/api/./v2/", "v2"),
        (b"/ws/../api/v2", "v2"),
        (b"/%77s/chat", "ws"),
        (b"/static/app.js", "default"),
        (b"/", "default"),
        (b"*", "default"),
        (b"http://gw/ws/x", "ws"),
    ],
)
def test_the_router_picks_the_longest_whole_segment_prefix(target: bytes, name: str) -> None:
    assert ROUTER.route(target).name == name


def test_one_route_means_no_matching() -> None:
    assert Router(DEFAULT).only is DEFAULT
    assert ROUTER.only is None
    assert [p for p, _ in ROUTER.routes] == [b"/api/v2", b"/api", b"/ws"]


# ================================================================== the config
def load(*tables: dict[str, Any], **upstream: Any) -> Any:
    document = {"upstream": {"url": "http://gw:1", **upstream}, "routes": list(tables)}
    return config_from_mapping(document)


def problems(*tables: Any) -> list[str]:
    found: list[ConfigError] = []
    config_from_mapping({"upstream": {"url": "http://gw:1"}, "routes": list(tables)}, None, found)
    return [str(p) for p in found]


def test_a_route_inherits_upstream_keys_it_does_not_set() -> None:
    config = load(
        {"prefix": "/ws/", "url": "http://[::1]:2", "read_timeout": "1h"},
        read_timeout=30,
        connect_timeout=2,
    )
    (route,) = config.routes
    assert route.prefix == "/ws"
    assert route.name == "/ws/"
    assert route.upstream.read_timeout == 3600.0
    assert route.upstream.connect_timeout == 2.0
    assert route.upstream.servers[0].host == "::1"
    assert route.websocket_idle_timeout == 3600.0
    assert config.upstream.read_timeout == 30.0


def test_every_route_key_is_accepted() -> None:
    table = {
        "prefix": "/a", "url": "http://gw:2", "name": "a", "websocket_idle_timeout": 0,
        "request_headers_set": {"X-Env": "prod"}, "request_headers_remove": ["X-Debug"],
        "response_headers_set": {"X-Frame-Options": "DENY"},
        "response_headers_remove": ["Server"], "host_header": "upstream",
        "connect_timeout": 1, "read_timeout": 2, "send_timeout": 3, "keepalive": 0,
        "keepalive_timeout": 4, "keepalive_requests": 5, "resolve_interval": 0,
    }  # fmt: skip
    assert set(table) == set(ROUTE_KEYS)
    (route,) = load(table).routes
    assert route.request_headers_set == (("X-Env", "prod"),)
    assert route.response_headers_remove == ("Server",)
    assert route.upstream.host_header == "upstream"
    assert route.upstream.keepalive_requests == 5
    assert route.websocket_idle_timeout == 0.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://gw:2"}, "routes[1].prefix: is required"),
        ({"prefix": "/a"}, "routes[1].url: is required"),
        ({"prefix": "api", "url": "http://gw:2"}, 'routes[1].prefix: must be a path starting'),
        ({"prefix": "/", "url": "http://gw:2"}, 'routes[1].prefix: cannot be "/"'),
        ({"prefix": "/a?b", "url": "http://gw:2"}, "no query"),
        ({"prefix": "/a b", "url": "http://gw:2"}, "spaces"),
        ({"prefix": "/%61", "url": "http://gw:2"}, "must be written decoded"),
        ({"prefix": "/a/../b", "url": "http://gw:2"}, "must be a normalised path"),
        ({"prefix": "//a", "url": "http://gw:2"}, "must be a normalised path"),
        ({"prefix": "/a", "url": "https://gw:2"}, "routes[1].url: 'https://gw:2': only http://"),
        ({"prefix": "/a", "url": "http://gw:2", "read_timeout": 0}, "routes[1].read_timeout"),
        ({"prefix": "/a", "url": "http://gw:2", "readiness_interval": 1}, "on [upstream] only"),
        ({"prefix": "/a", "url": "http://gw:2", "reed_timeout": 1},
         "did you mean routes[1].read_timeout"),
        ({"prefix": "/a", "url": "http://gw:2", "name": "default"}, '"default" is the [upstream]'),
        ({"prefix": "/a", "url": "http://gw:2", "name": "a b"}, "routes[1].name: must be"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_remove": ["Host"]},
         "Host cannot be removed"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_set": {"Connection": "x"}},
         "Connection is hop-by-hop"),
        ({"prefix": "/a", "url": "http://gw:2", "response_headers_remove": ["Transfer-Encoding"]},
         "frames the body"),
        ({"prefix": "/a", "url": "http://gw:2", "response_headers_set": {"Content-Length": "1"}},
         "frames the body"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_set": {"X a": "1"}},
         "'X a' is not a header name"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_set": {"X-A": "1\r\nX-B: 2"}},
         "without control characters"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_set": {"X-A": 1}},
         "without control characters"),
        ({"prefix": "/a", "url": "http://gw:2", "request_headers_set": ["X-A"]}, "must be a table"),
        ({"prefix": "/a", "url": "http://gw:2", "response_headers_remove": "Server, Date"},
         "is not a header name"),
        ("not a table", "routes[1]: must be a table"),
    ],
)  # fmt: skip
def test_route_errors_name_the_route_and_key(table: Any, message: str) -> None:
    found = problems(table)
    assert any(message in p for p in found), found


def test_duplicate_prefixes_and_names_are_refused() -> None:
    found = problems(
        {"prefix": "/api", "url": "http://gw:2"},
        {"prefix": "/api/", "url": "http://gw:3"},
        {"prefix": "/b", "url": "http://gw:3", "name": "/api"},
    )
    assert found == [
        "routes[2].prefix: '/api' is the same as routes[1]'s prefix "
        "(/api/ and /api match the same paths)",
        "routes[3].name: '/api' is routes[1]'s name too",
    ]


def test_routes_must_be_an_array_of_tables() -> None:
    found: list[ConfigError] = []
    config_from_mapping(
        {"upstream": {"url": "http://gw:1"}, "routes": {"prefix": "/a"}}, None, found
    )
    assert [str(p) for p in found] == [
        "routes: must be an array of tables ([[routes]]), got {'prefix': '/a'}"
    ]
