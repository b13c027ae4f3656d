"""Per-client limits on loopback, over 127.0.0.1 and ::1 and both codecs.

``server.max_connections_per_ip``: connections beyond it from one client are
closed at once, the others keep working, and closing one frees a place.
``server.rate_limit``: requests beyond the bucket get 429 and are counted; other
clients are not affected.
"""

from __future__ import annotations

import socket
import time

from tests.conftest import ProxyFactory, RawResponse, ResponseReader, raw_request, wait_for


def ask(sock: socket.socket, target: str) -> RawResponse:
    """One GET on an open connection (keep-alive)."""
    sock.sendall(raw_request("GET", target))
    return ResponseReader(sock).read()


def _closed_at_once(sock: socket.socket) -> bool:
    """The proxy closed (or reset) a connection without a byte of response."""
    sock.settimeout(3)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connections_beyond_the_per_client_limit_are_closed(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"max_connections_per_ip": 2})
    first, second = proxy.connect(), proxy.connect()
    try:
        assert ask(first, "/echo").status == 200
        assert ask(second, "/echo").status == 200
        with proxy.connect() as third:
            assert _closed_at_once(third)
        assert wait_for(lambda: proxy.observer.client_errors.count("too_many_connections") == 1)
        # The two it kept still work; closing one makes room for a new one.
        assert ask(first, "/echo").status == 200
        second.close()
        assert wait_for(lambda: proxy.server.limits.open_connections(proxy.host) <= 1)
        with proxy.connect() as fourth:
            assert ask(fourth, "/echo").status == 200
    finally:
        first.close()
        second.close()


def test_requests_beyond_the_rate_get_429(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"rate_limit": 1.0, "rate_limit_burst": 3})
    statuses = []
    for _ in range(5):
        with proxy.connect() as sock:
            statuses.append(ask(sock, "/echo").status)
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [429, 429]
    assert proxy.observer.client_errors.count("rate_limited") == 2
    assert [r.status for r in proxy.observer.requests[-2:]] == [429, 429]
    time.sleep(1.05)  # one token back
    with proxy.connect() as sock:
        assert ask(sock, "/echo").status == 200


def test_keep_alive_requests_share_the_bucket(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"rate_limit": 0.5, "rate_limit_burst": 2})
    with proxy.connect() as sock:
        assert ask(sock, "/echo").status == 200
        assert ask(sock, "/echo").status == 200
        limited = ask(sock, "/echo")
        assert limited.status == 429
        assert limited.header(b"connection") == b"close"
