"""Listen sockets: one dual-stack [::] socket, IPv6-only, plain forms, several, and fallback."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dsproxy.net.addr import HostPort
from dsproxy.net.listener import ListenError, bind_listener
from tests.conftest import IPV6, LoopThread, ProxyFactory, RunningProxy
from tests.upstream_server import Upstream

pytestmark = pytest.mark.skipif(not IPV6, reason="IPv6 loopback unavailable")


@pytest.fixture
def factory(loop_thread: LoopThread, upstream: Upstream) -> Iterator[ProxyFactory]:
    f = ProxyFactory(loop_thread, "h11", "127.0.0.1", upstream)
    yield f
    f.stop_all()


def answers(host: str, port: int) -> bool:
    """True when an HTTP request to host:port is proxied; False when refused."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with httpx.Client(timeout=3) as client:
            resp = client.get(f"http://{authority}/echo")
    except httpx.ConnectError:
        return False
    assert resp.status_code == 200
    return True


def test_dual_stack_socket_answers_both_families(factory: ProxyFactory) -> None:
    proxy = factory(server={"listen": (HostPort("::", 0),)})
    (listener,) = proxy.server._listeners.values()
    assert listener[0].dual_stack
    assert answers("127.0.0.1", proxy.port)
    assert answers("::1", proxy.port)
    families = proxy.observer.opened
    assert families == ["ipv4", "ipv6"]


def test_ipv6only_refuses_ipv4(factory: ProxyFactory) -> None:
    proxy = factory(server={"listen": (HostPort("::", 0),), "ipv6only": True})
    (listener,) = proxy.server._listeners.values()
    assert not listener[0].dual_stack
    assert answers("::1", proxy.port)
    assert not answers("127.0.0.1", proxy.port)


def test_ipv4_any_form(factory: ProxyFactory) -> None:
    proxy = factory(server={"listen": (HostPort("0.0.0.0", 0),)})
    assert proxy.server.addresses[0].host == "0.0.0.0"
    assert answers("127.0.0.1", proxy.port)
    assert not answers("::1", proxy.port)


def test_ipv6_loopback_form(factory: ProxyFactory) -> None:
    proxy = factory(server={"listen": (HostPort("::1", 0),)})
    assert proxy.server.addresses[0].host == "::1"
    assert answers("::1", proxy.port)
    assert not answers("127.0.0.1", proxy.port)


def test_several_listen_addresses(factory: ProxyFactory) -> None:
    proxy = factory(server={"listen": (HostPort("127.0.0.1", 0), HostPort("::1", 0))})
    v4, v6 = proxy.server.addresses
    assert (v4.host, v6.host) == ("127.0.0.1", "::1")
    assert v4.port != 0
    assert v6.port != 0
    assert answers("127.0.0.1", v4.port)
    assert answers("::1", v6.port)


def test_listen_address_in_use_is_a_listen_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            bind_listener(HostPort("127.0.0.1", port))


# ============================================================ IPv6 unavailable
_REAL_SOCKET = socket.socket


class _NoIPv6Socket:
    """Stands in for socket.socket: AF_INET6 raises EAFNOSUPPORT as on a host without IPv6."""

    def __new__(cls, family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> Any:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return _REAL_SOCKET(family, *args, **kwargs)


def test_ipv6_unavailable_falls_back_to_ipv4_any(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(socket, "socket", _NoIPv6Socket)
    with caplog.at_level(logging.WARNING, logger="dsproxy.net.listener"):
        bound = bind_listener(HostPort("::", 0))
    monkeypatch.undo()
    try:
        assert bound.sock.family == socket.AF_INET
        assert bound.bound.host == "0.0.0.0"
        assert not bound.dual_stack
        assert any("0.0.0.0" in r.getMessage() for r in caplog.records)
        assert any(r.levelno == logging.WARNING for r in caplog.records)
    finally:
        bound.sock.close()


def test_ipv6_unavailable_with_ipv6only_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _NoIPv6Socket)
    with pytest.raises(ListenError):
        bind_listener(HostPort("::", 0), ipv6only=True)


def test_ipv6_unavailable_specific_address_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _NoIPv6Socket)
    with pytest.raises(ListenError):
        bind_listener(HostPort("::1", 0))


def test_running_proxy_exposes_port(proxy: RunningProxy) -> None:
    assert proxy.port > 0
    assert answers(proxy.host, proxy.port)
