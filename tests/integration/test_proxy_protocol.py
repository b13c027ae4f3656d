"""PROXY protocol in, on loopback over 127.0.0.1 and ::1 and both HTTP/1.1 codecs.

With ``server.proxy_protocol`` the header's address is the client's: the
upstream sees it in X-Forwarded-For / X-Real-IP, the access log record and the
connection metrics carry it and its family, and the per-client limits count it.
The header comes from ``curl --haproxy-protocol`` (a real sender: it tells its
own socket address) and from hand-built v1 and v2 bytes with other addresses.
Peers outside ``server.proxy_protocol_from`` are closed at once; a missing,
malformed or truncated header closes the connection; nothing reaches the upstream.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from typing import Any

import pytest

from dsproxy.net.addr import HostPort
from fuzz.proxyproto_harness import v1, v1_unknown, v2
from tests.conftest import (
    LoopThread,
    ProxyFactory,
    ResponseReader,
    RunningProxy,
    raw_request,
    wait_for,
)
from tests.upstream_server import Upstream

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ON: dict[str, Any] = {"proxy_protocol": True, "proxy_protocol_from": LOOPBACK}
DEST4, DEST6 = HostPort("192.0.2.80", 443), HostPort("2001:db8::80", 443)


def _echo(sock: socket.socket, reader: ResponseReader | None = None) -> dict[str, Any]:
    sock.sendall(raw_request("GET", "/echo"))
    response = (reader or ResponseReader(sock)).read()
    assert response.status == 200
    body: dict[str, Any] = json.loads(response.body)
    return body


def _header(echo: dict[str, Any], name: str) -> str | None:
    values = [v for n, v in echo["headers"] if n.lower() == name]
    return values[0] if values else None


def _closed_without_a_byte(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    ("header", "client_ip", "family"),
    [
        (v1(HostPort("203.0.113.7", 51000), DEST4), "203.0.113.7", "ipv4"),
        (v1(HostPort("2001:db8::7", 51000), DEST6), "2001:db8::7", "ipv6"),
        (v2(HostPort("198.51.100.9", 40000), DEST4), "198.51.100.9", "ipv4"),
        (v2(HostPort("2001:db8:1::9", 40000), DEST6), "2001:db8:1::9", "ipv6"),
        (v2(HostPort("::ffff:198.51.100.10", 1), DEST6), "198.51.100.10", "ipv4"),
        (v1_unknown(), None, None),  # the socket's peer
        (v2(command=0), None, None),  # LOCAL: the socket's peer
    ],
    ids=["v1-ipv4", "v1-ipv6", "v2-ipv4", "v2-ipv6", "v2-mapped", "v1-unknown", "v2-local"],
)
def test_the_header_address_is_the_client_address(
    proxy_factory: ProxyFactory,
    upstream: Upstream,
    header: bytes,
    client_ip: str | None,
    family: str | None,
) -> None:
    proxy = proxy_factory(server=ON)
    peer_family = "ipv6" if ":" in proxy.host else "ipv4"
    expected_ip, expected_family = client_ip or proxy.host, family or peer_family
    with proxy.connect() as sock:
        sock.sendall(header)
        reader = ResponseReader(sock)
        first = _echo(sock, reader)
        second = _echo(sock, reader)  # keep-alive: the same client for every request
    for echo in (first, second):
        assert _header(echo, "x-forwarded-for") == expected_ip
        assert _header(echo, "x-real-ip") == expected_ip
        assert _header(echo, "x-forwarded-port") == str(proxy.port)  # the socket's
    assert wait_for(lambda: len(proxy.observer.requests) == 2)
    assert {(r.client_ip, r.family) for r in proxy.observer.requests} == {
        (expected_ip, expected_family)
    }
    assert proxy.observer.opened == [expected_family]
    assert proxy.observer.client_errors == []


def test_header_and_request_in_one_segment(proxy_factory: ProxyFactory) -> None:
    """The bytes read behind the header are the request's, not lost."""
    proxy = proxy_factory(server=ON)
    with proxy.connect() as sock:
        sock.sendall(v2(HostPort("203.0.113.9", 1), DEST4) + raw_request("GET", "/echo?one"))
        response = ResponseReader(sock).read()
    echo = json.loads(response.body)
    assert echo["target"] == "/echo?one"
    assert _header(echo, "x-forwarded-for") == "203.0.113.9"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server=ON)
    family_flag = "-6" if ":" in proxy.host else "-4"
    out = subprocess.run(
        ["curl", "-sS", family_flag, "--haproxy-protocol", "--max-time", "10", f"{proxy.url}/echo"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    echo = json.loads(out.stdout)
    # curl sends "PROXY TCP4|TCP6 <its address> <ours> <ports>": its own loopback address.
    assert _header(echo, "x-forwarded-for") == proxy.host
    assert proxy.observer.client_errors == []
    # Without the header, the same curl is refused: the listener requires it.
    plain = subprocess.run(
        ["curl", "-sS", family_flag, "--max-time", "10", f"{proxy.url}/echo"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert plain.returncode != 0
    assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])


def test_peer_outside_the_allowed_networks_is_closed_at_once(
    proxy_factory: ProxyFactory, upstream: Upstream
) -> None:
    proxy = proxy_factory(
        server={**ON, "proxy_protocol_from": (ipaddress.ip_network("192.0.2.0/24"),)}
    )
    started = time.monotonic()
    with proxy.connect() as sock:
        sock.sendall(v1(HostPort("203.0.113.7", 1), DEST4) + raw_request("GET", "/echo"))
        assert _closed_without_a_byte(sock)
    assert time.monotonic() - started < 2.0  # not at the header deadline (10 s)
    assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])
    assert upstream.accepted == 0
    assert upstream.requests == []


@pytest.mark.parametrize(
    "sent",
    [
        raw_request("GET", "/echo"),  # no header at all
        b"PROXY TCP4 203.0.113.7 ::1 1 2\r\n" + raw_request("GET", "/echo"),  # wrong family
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 65536\r\n" + raw_request("GET", "/echo"),
        v2(HostPort("203.0.113.7", 1), DEST4, version=1) + raw_request("GET", "/echo"),
    ],
    ids=["plain-http", "v1-mixed-families", "v1-port-out-of-range", "v2-version-1"],
)
def test_malformed_header_is_closed_and_counted(
    proxy_factory: ProxyFactory, upstream: Upstream, sent: bytes
) -> None:
    proxy = proxy_factory(server=ON)
    with proxy.connect() as sock:
        sock.sendall(sent)
        assert _closed_without_a_byte(sock)
    assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])
    assert upstream.accepted == 0
    assert upstream.requests == []


@pytest.mark.parametrize(
    "sent", [b"", b"PROXY TCP6 2001:db8::7 ", v2(HostPort("203.0.113.7", 1), DEST4)[:20]]
)
def test_missing_or_truncated_header_is_closed_at_header_timeout(
    proxy_factory: ProxyFactory, upstream: Upstream, sent: bytes
) -> None:
    proxy = proxy_factory(server={**ON, "header_timeout": 0.3})
    started = time.monotonic()
    with proxy.connect() as sock:
        if sent:
            sock.sendall(sent)
        assert _closed_without_a_byte(sock, timeout=5)
    waited = time.monotonic() - started
    assert 0.25 <= waited < 3.0
    assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])
    assert upstream.accepted == 0


def test_truncated_header_then_close_is_counted(
    proxy_factory: ProxyFactory, upstream: Upstream
) -> None:
    proxy = proxy_factory(server=ON)
    with proxy.connect() as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2")
        sock.shutdown(socket.SHUT_WR)
        assert _closed_without_a_byte(sock)
    assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])
    # A bare connect-and-close (a load balancer's TCP health check) is not an error.
    with proxy.connect() as sock:
        sock.shutdown(socket.SHUT_WR)
        assert _closed_without_a_byte(sock)
    time.sleep(0.1)
    assert proxy.observer.client_errors == ["proxy_protocol"]
    assert upstream.accepted == 0


def test_per_client_limits_count_the_header_address(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={**ON, "max_connections_per_ip": 1})
    first, second, third = proxy.connect(), proxy.connect(), proxy.connect()
    try:
        first.sendall(v1(HostPort("203.0.113.7", 1), DEST4))
        assert _header(_echo(first), "x-forwarded-for") == "203.0.113.7"
        # Same balancer (the same socket peer), another client: it has its own allowance.
        second.sendall(v2(HostPort("2001:db8::7", 1), DEST6))
        assert _header(_echo(second), "x-forwarded-for") == "2001:db8::7"
        third.sendall(v2(HostPort("203.0.113.7", 2), DEST4))  # the first client again
        assert _closed_without_a_byte(third)
        assert wait_for(lambda: proxy.observer.client_errors == ["too_many_connections"])
        assert proxy.server.limits.open_connections("203.0.113.7") == 1
    finally:
        for sock in (first, second, third):
            sock.close()


def test_reload_turns_the_header_on_and_off_for_new_connections(
    proxy_factory: ProxyFactory, loop_thread: LoopThread
) -> None:
    proxy = proxy_factory(server=ON)
    on_before = proxy.connect()  # accepted while the header is required
    try:
        _reload(loop_thread, proxy, proxy_protocol=False)
        with proxy.connect() as sock:  # new connections: plain HTTP
            assert _header(_echo(sock), "x-forwarded-for") == proxy.host
        # The connection accepted before the reload still needs its header.
        on_before.sendall(raw_request("GET", "/echo"))
        assert _closed_without_a_byte(on_before)
        assert wait_for(lambda: proxy.observer.client_errors == ["proxy_protocol"])
    finally:
        on_before.close()
    _reload(loop_thread, proxy, proxy_protocol=True, proxy_protocol_from=LOOPBACK[:1])
    with proxy.connect() as sock:
        if ":" in proxy.host:  # ::1 is no longer allowed to send a header
            assert _closed_without_a_byte(sock)
            return
        sock.sendall(v1(HostPort("203.0.113.8", 1), DEST4))
        assert _header(_echo(sock), "x-forwarded-for") == "203.0.113.8"


def _reload(loop_thread: LoopThread, proxy: RunningProxy, **server: Any) -> None:
    config = proxy.server.config
    new = replace(config, server=replace(config.server, **server))
    loop_thread.call(proxy.server.reload(new))
