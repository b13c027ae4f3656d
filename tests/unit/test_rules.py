"""Pure tests of dsproxy.http.rules and dsproxy.net.addr (no sockets)."""

from __future__ import annotations

import ipaddress

import pytest

from dsproxy.config import ServerConfig
from dsproxy.errors import ClientError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.rules import (
    ClientContext,
    UpstreamRequest,
    UpstreamTarget,
    build_client_response,
    build_switch_response,
    build_upstream_request,
    client_context,
    error_response,
    header_rules,
    is_trusted,
)
from dsproxy.net.addr import HostPort, family_of, normalise_ip, parse_hostport


def request(
    headers: Headers,
    *,
    method: bytes = b"GET",
    target: bytes = b"/a?b=%2F",
    version: bytes = b"1.1",
    keep_alive: bool = True,
    content_length: int | None = None,
    chunked: bool = False,
    upgrade: bytes | None = None,
) -> RequestHead:
    return RequestHead(
        method=method,
        target=target,
        version=version,
        headers=headers,
        keep_alive=keep_alive,
        content_length=content_length,
        chunked=chunked,
        upgrade=upgrade,
        expect_continue=False,
    )


def response(
    headers: Headers, *, status: int = 200, content_length: int | None = None, chunked: bool = False
) -> ResponseHead:
    return ResponseHead(
        status=status,
        reason=b"OK",
        version=b"1.1",
        headers=headers,
        keep_alive=True,
        content_length=content_length,
        chunked=chunked,
    )


def ctx(
    client_ip: str = "192.0.2.7", *, trusted: bool = False, preserve_host: bool = True
) -> tuple[ClientContext, UpstreamTarget]:
    return (
        ClientContext(client_ip=client_ip, listen_port=b"16980", trusted=trusted),
        UpstreamTarget(authority=b"gateway:18080", preserve_host=preserve_host),
    )


def forward(
    head: RequestHead, where: tuple[ClientContext, UpstreamTarget], *, max_body_bytes: int = 0
) -> UpstreamRequest:
    return build_upstream_request(head, *where, max_body_bytes=max_body_bytes)


def names(headers: Headers) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


# ============================================================ requests
def test_hop_by_hop_and_connection_listed_stripped() -> None:
    head = request(
        [
            (b"Host", b"api.example"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"gzip"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"h2c"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Private", b"1"),
            (b"Accept", b"*/*"),
        ],
        chunked=True,
    )
    up = forward(head, ctx())
    got = names(up.headers)
    for gone in (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer"):
        assert gone not in got
    assert b"upgrade" not in got
    assert b"x-private" not in got
    assert values(up.headers, b"accept") == [b"*/*"]
    # The body is re-framed by the proxy: exactly one Transfer-Encoding it set itself.
    assert values(up.headers, b"transfer-encoding") == [b"chunked"]
    assert up.chunked
    assert not up.websocket
    assert up.method == b"GET"
    assert up.target == b"/a?b=%2F"


def test_forwarded_headers_set() -> None:
    up = forward(request([(b"Host", b"api.example:8443")]), ctx("2001:db8::1"))
    assert values(up.headers, b"host") == [b"api.example:8443"]
    assert values(up.headers, b"x-forwarded-for") == [b"2001:db8::1"]
    assert values(up.headers, b"x-real-ip") == [b"2001:db8::1"]
    assert values(up.headers, b"x-forwarded-proto") == [b"http"]
    assert values(up.headers, b"x-forwarded-host") == [b"api.example:8443"]
    assert values(up.headers, b"x-forwarded-port") == [b"16980"]
    assert up.host == b"api.example:8443"


def test_untrusted_client_forwarded_headers_replaced() -> None:
    head = request(
        [
            (b"Host", b"h"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"X-Real-IP", b"6.6.6.6"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Forwarded-Port", b"1"),
        ]
    )
    up = forward(head, ctx())
    assert values(up.headers, b"x-forwarded-for") == [b"192.0.2.7"]
    assert values(up.headers, b"x-real-ip") == [b"192.0.2.7"]
    assert values(up.headers, b"x-forwarded-proto") == [b"http"]
    assert values(up.headers, b"x-forwarded-host") == [b"h"]
    assert values(up.headers, b"x-forwarded-port") == [b"16980"]


def test_trusted_client_forwarded_for_appended() -> None:
    head = request(
        [
            (b"Host", b"h"),
            (b"X-Forwarded-For", b"198.51.100.1"),
            (b"X-Forwarded-For", b"198.51.100.2"),
            (b"X-Forwarded-Proto", b"https"),
        ]
    )
    up = forward(head, ctx(trusted=True))
    assert values(up.headers, b"x-forwarded-for") == [b"198.51.100.1, 198.51.100.2, 192.0.2.7"]
    assert values(up.headers, b"x-forwarded-proto") == [b"https"]


def test_host_header_upstream_mode() -> None:
    up = forward(request([(b"Host", b"public.example")]), ctx(preserve_host=False))
    assert values(up.headers, b"host") == [b"gateway:18080"]
    assert values(up.headers, b"x-forwarded-host") == [b"public.example"]


def test_http10_without_host_gets_upstream_authority() -> None:
    up = forward(request([], version=b"1.0", keep_alive=False), ctx())
    assert values(up.headers, b"host") == [b"gateway:18080"]


def test_websocket_upgrade_restated() -> None:
    head = request(
        [
            (b"Host", b"h"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Key", b"k"),
        ],
        upgrade=b"websocket",
    )
    up = forward(head, ctx())
    assert up.websocket
    assert values(up.headers, b"upgrade") == [b"websocket"]
    assert [v.lower() for v in values(up.headers, b"connection")] == [b"upgrade"]
    assert values(up.headers, b"sec-websocket-key") == [b"k"]


def test_h2c_upgrade_not_honoured() -> None:
    head = request(
        [
            (b"Host", b"h"),
            (b"Connection", b"Upgrade, HTTP2-Settings"),
            (b"Upgrade", b"h2c"),
            (b"HTTP2-Settings", b"AAA"),
        ],
        upgrade=b"h2c",
    )
    up = forward(head, ctx())
    assert not up.websocket
    assert b"upgrade" not in names(up.headers)
    assert b"http2-settings" not in names(up.headers)
    assert b"connection" not in names(up.headers)


def test_te_trailers_kept() -> None:
    up = forward(request([(b"Host", b"h"), (b"TE", b"trailers")]), ctx())
    assert values(up.headers, b"te") == [b"trailers"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request([(b"Host", b"h")], method=b"CONNECT"), 405),
        (request([]), 400),
        (request([(b"Host", b"a"), (b"host", b"b")]), 400),
        (request([(b"Host", b"h")], content_length=101), 413),
    ],
)
def test_refusals(head: RequestHead, status: int) -> None:
    with pytest.raises(ClientError) as info:
        forward(head, ctx(), max_body_bytes=100)
    assert info.value.status == status


def test_accepted_bodies_and_hosts() -> None:
    head = request([(b"Host", b"h")], content_length=100)
    forward(head, ctx(), max_body_bytes=100)
    forward(request([(b"Host", b"h")], content_length=10**9), ctx())
    up = forward(request([], version=b"1.0"), ctx())
    assert values(up.headers, b"host") == [b"gateway:18080"]


def test_connection_cannot_drop_host() -> None:
    """Host is mandatory end to end: a Connection token naming it is ignored."""
    head = request([(b"Host", b"public.example"), (b"Connection", b"host, x-trace")])
    head.headers.append((b"X-Trace", b"1"))
    up = forward(head, ctx(preserve_host=True))
    assert values(up.headers, b"host") == [b"public.example"]
    assert values(up.headers, b"x-trace") == []


# ============================================================ responses
def test_response_hop_by_hop_stripped_and_framing() -> None:
    resp = response(
        [
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"Content-Type", b"text/plain"),
        ],
        chunked=True,
    )
    out = build_client_response(resp, request([(b"Host", b"h")]), close=False)
    assert names(out.headers) == [b"content-type", b"transfer-encoding"]
    assert out.chunked
    assert not out.close


def test_response_with_content_length_not_chunked() -> None:
    resp = response([(b"Content-Length", b"5")], content_length=5)
    out = build_client_response(resp, request([(b"Host", b"h")]), close=False)
    assert values(out.headers, b"content-length") == [b"5"]
    assert not out.chunked


def test_response_to_http10_client_is_close_delimited() -> None:
    out = build_client_response(
        response([]), request([], version=b"1.0", keep_alive=False), close=False
    )
    assert not out.chunked
    assert out.close
    assert values(out.headers, b"connection") == [b"close"]


def test_response_close_requested() -> None:
    resp = response([(b"Content-Length", b"0")], content_length=0)
    out = build_client_response(resp, request([(b"Host", b"h")]), close=True)
    assert out.close
    assert values(out.headers, b"connection") == [b"close"]


def test_head_response_not_rechunked() -> None:
    out = build_client_response(
        response([]), request([(b"Host", b"h")], method=b"HEAD"), close=False
    )
    assert not out.chunked
    assert b"transfer-encoding" not in names(out.headers)


def test_switch_response() -> None:
    out = build_switch_response(
        response(
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"a"),
            ],
            status=101,
        )
    )
    assert values(out, b"sec-websocket-accept") == [b"a"]
    assert values(out, b"upgrade") == [b"websocket"]
    assert len(values(out, b"connection")) == 1


@pytest.mark.parametrize("status", [400, 408, 413, 431, 502, 503, 504])
def test_error_response(status: int) -> None:
    reason, headers, body = error_response(status)
    assert body.startswith(str(status).encode())
    assert values(headers, b"content-length") == [str(len(body)).encode()]
    assert values(headers, b"connection") == [b"close"]
    assert reason


def test_is_trusted() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert is_trusted("10.1.2.3", nets)
    assert is_trusted("fd00::1", nets)
    assert not is_trusted("11.0.0.1", nets)
    assert not is_trusted("10.1.2.3", ())
    assert not is_trusted("not-an-ip", nets)


# ============================================================ addr
@pytest.mark.parametrize(
    ("ip", "want"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::FFFF:10.0.0.1", "10.0.0.1"),
        ("::ffff:0a00:0001", "10.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("::ffff:zzz", "::ffff:zzz"),
    ],
)
def test_normalise_ip(ip: str, want: str) -> None:
    assert normalise_ip(ip) == want


def test_family_of() -> None:
    assert family_of("127.0.0.1") == "ipv4"
    assert family_of("::1") == "ipv6"
    assert family_of(normalise_ip("::ffff:192.0.2.1")) == "ipv4"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("[::]:16980", HostPort("::", 16980)),
        ("[::1]:0", HostPort("::1", 0)),
        ("0.0.0.0:80", HostPort("0.0.0.0", 80)),
        (" 127.0.0.1:65535 ", HostPort("127.0.0.1", 65535)),
    ],
)
def test_parse_hostport(text: str, want: HostPort) -> None:
    assert parse_hostport(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "::1:80",
        "[::1]80",
        "[::1",
        "[nope]:80",
        "1.2.3.4",
        ":80",
        "1.2.3.4:99999",
        "1.2.3.4:x",
        "host:80",
        "1.2.3:80",
    ],
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_hostport(text)


def test_parse_hostport_names_when_allowed() -> None:
    assert parse_hostport("gateway.svc:18080", allow_names=True) == HostPort("gateway.svc", 18080)


def test_hostport_str() -> None:
    assert str(HostPort("::", 1)) == "[::]:1"
    assert str(HostPort("10.0.0.1", 2)) == "10.0.0.1:2"


# ============================================================ RFC 7239 Forwarded
def forwarded_ctx(client_ip: str, local_ip: str, *, trusted: bool = False, tls: bool = False) -> (
    tuple[ClientContext, UpstreamTarget]
):  # fmt: skip
    networks = (ipaddress.ip_network(client_ip),) if trusted else ()
    server = ServerConfig(forwarded=True, trusted_proxies=networks)
    context = client_context(client_ip, local_ip, 16980, server, tls=tls)
    return context, UpstreamTarget(authority=b"gateway:18080", preserve_host=True)


@pytest.mark.parametrize(
    ("client", "local", "expected"),
    [
        ("203.0.113.7", "10.0.0.5", b"for=203.0.113.7;proto=http;host=api.test;by=10.0.0.5"),
        ("2001:db8::7", "::1", b'for="[2001:db8::7]";proto=http;host=api.test;by="[::1]"'),
        # A dual-stack socket's own address is IPv4-mapped: by= shows the IPv4 form.
        ("192.0.2.1", "::ffff:10.0.0.5", b"for=192.0.2.1;proto=http;host=api.test;by=10.0.0.5"),
    ],
)
def test_forwarded_element(client: str, local: str, expected: bytes) -> None:
    out = forward(request([(b"Host", b"api.test")]), forwarded_ctx(client, local))
    assert values(out.headers, b"forwarded") == [expected]


def test_forwarded_quotes_a_host_with_a_port_and_says_https() -> None:
    head = request([(b"Host", b"[2001:db8::1]:8443")])
    out = forward(head, forwarded_ctx("192.0.2.1", "10.0.0.5", tls=True))
    assert values(out.headers, b"forwarded") == [
        b'for=192.0.2.1;proto=https;host="[2001:db8::1]:8443";by=10.0.0.5'
    ]
    assert values(out.headers, b"x-forwarded-proto") == [b"https"]


def test_forwarded_escapes_quotes_in_a_host() -> None:
    out = forward(request([(b"Host", b'a"b\\c')]), forwarded_ctx("192.0.2.1", "10.0.0.5"))
    assert values(out.headers, b"forwarded") == [
        b'for=192.0.2.1;proto=http;host="a\\"b\\\\c";by=10.0.0.5'
    ]


def test_forwarded_from_an_untrusted_peer_is_replaced() -> None:
    head = request([(b"Host", b"h"), (b"Forwarded", b"for=6.6.6.6"), (b"forwarded", b"by=x")])
    out = forward(head, forwarded_ctx("192.0.2.1", "10.0.0.5"))
    assert values(out.headers, b"forwarded") == [b"for=192.0.2.1;proto=http;host=h;by=10.0.0.5"]


def test_forwarded_from_a_trusted_peer_is_appended_to() -> None:
    head = request(
        [(b"Host", b"h"), (b"Forwarded", b"for=1.1.1.1"), (b"Forwarded", b"for=2.2.2.2")]
    )
    out = forward(head, forwarded_ctx("192.0.2.1", "10.0.0.5", trusted=True))
    assert values(out.headers, b"forwarded") == [
        b"for=1.1.1.1, for=2.2.2.2, for=192.0.2.1;proto=http;host=h;by=10.0.0.5"
    ]


def test_forwarded_off_passes_the_clients_value() -> None:
    head = request([(b"Host", b"h"), (b"Forwarded", b"for=6.6.6.6")])
    assert values(forward(head, ctx()).headers, b"forwarded") == [b"for=6.6.6.6"]


# ============================================================ route header rules
def test_header_rules_apply_after_the_hop_by_hop_rules() -> None:
    rules = header_rules({"X-Env": "prod", "Host": "internal"}, ("X-Debug", "x-forwarded-port"))
    assert rules is not None
    target = UpstreamTarget(authority=b"gw:1", preserve_host=True, request_rules=rules)
    head = request(
        [(b"Host", b"h"), (b"X-ENV", b"dev"), (b"x-debug", b"1"), (b"Connection", b"x-a"),
         (b"X-A", b"a"), (b"X-Keep", b"k")]
    )  # fmt: skip
    out = build_upstream_request(head, ctx()[0], target)
    assert values(out.headers, b"x-env") == [b"prod"]
    assert values(out.headers, b"host") == [b"internal"]
    assert values(out.headers, b"x-forwarded-host") == [b"h"]
    assert not values(out.headers, b"x-debug")
    assert not values(out.headers, b"x-forwarded-port")
    assert not values(out.headers, b"x-a")
    assert values(out.headers, b"x-keep") == [b"k"]


def test_no_rules_is_none() -> None:
    assert header_rules({}, ()) is None
